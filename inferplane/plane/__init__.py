"""The plane core shared by the Serve ingress and the replay: an ingress replica's placement state
(the local view of the fleet), the attempt loop (place, dispatch, re-place before the first byte)
and the request record. No Ray imports: the same code runs in a Serve replica and on simulated time.
"""
