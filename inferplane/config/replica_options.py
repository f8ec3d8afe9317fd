"""What Ray is asked for per substrate replica: CPUs, GPUs and the node labels it may run on.

One function, used where a substrate deployment is made (``deployments.app``) and where a Serve
config file states the same options (``cli.deploy.serve_config``): a Serve config's
``ray_actor_options`` replace the code's as a whole, so both must come from here.
"""

from __future__ import annotations

from inferplane.config.schema import InferplaneConfig, Substrate, VllmSubstrate


def substrate_actor_options(cfg: InferplaneConfig, substrate: Substrate, *, gpu: bool,
                            pin: bool | None = None, pin_jurisdiction: bool = False) -> dict:
    """``ray_actor_options`` of one substrate's replicas.

    - ``num_cpus`` 0: a replica waits on its engine or upstream; Ray's CPU count is not its limit.
    - ``num_gpus``: with ``gpu``, a vLLM replica holds ``tensor_parallel_size`` GPUs.
    - ``label_selector`` when pinned (``pin``; default the config's ``pin_replicas_to_labels``):
      the substrate's declared zone. ``pin_jurisdiction`` adds its jurisdiction (a country code),
      for clusters whose nodes are labelled by who deploys them (the KubeRay manifest).
    """
    t = cfg.policy.topology
    options: dict = {"num_cpus": 0}
    if gpu and isinstance(substrate, VllmSubstrate):
        options["num_gpus"] = substrate.vllm.engine.tensor_parallel_size
    if t.pin_replicas_to_labels if pin is None else pin:
        # Replicas go to nodes labelled with the substrate's declared zone. Jurisdiction is not
        # assumed from that: each replica reports its node's jurisdiction label, and a node
        # outside the declared jurisdiction takes the substrate away from tenants who need it.
        selector = {t.zone_label: substrate.topology.zone}
        if pin_jurisdiction:
            selector[t.jurisdiction_label] = node_country(cfg, substrate)
        options["label_selector"] = selector
    return options


def node_country(cfg: InferplaneConfig, substrate: Substrate) -> str:
    """The country a substrate's nodes are labelled with: its jurisdiction, which must then be one
    country (a node is in one place; a group such as `EU` does not say which)."""
    j = substrate.jurisdiction
    if j in cfg.jurisdiction_groups or not (len(j) == 2 and j.isalpha() and j.isupper()):
        raise ValueError(f"substrate `{substrate.name}` has jurisdiction `{j}`, a group: labelling its nodes "
                         "needs the one country they are in; declare that country as its jurisdiction")
    return j
