"""What-if replay: real traces through the plane's own placement, in simulated time.

    trace            loaders (Azure CSV, Mooncake JSONL, parquet), units in seconds and tokens
    workload         tenants, SLA classes, max_tokens and rate/time scaling, by a seeded rule
    scenario         the scenario file: config, workload, faults, simulation and gateway settings
    substrate_physics  each substrate's ``substrate_adapters.physics.PhysicsModel``
    clock            the event heap; substrate_sim  one substrate in simulated time
    attempt          one attempt of a request on a substrate
    router           the contract of a router; plane_router  inferplane; baselines  four gateways
    simulator        the discrete-event loop; outcome  what happened to a request, and its cost
    report           metrics per router; bound  the fluid LP bound; plots  PNGs
    runner           all of it, end to end (``inferplane replay``)
"""
