"""Serve IAA with Ray Serve LLM: N vLLM replicas behind one OpenAI endpoint.

    .venv/bin/iaa-vllm init checkpoints/tiny --preset tiny     # once
    .venv/bin/python examples/ray_serve.py [--config examples/ray_serve.yaml] [--model DIR]
        [--port 8000] [--min-replicas 1] [--max-replicas 2] [--num-cpus 2]

Starts a local Ray cluster, deploys `ray.serve.llm.build_openai_app` with the
config's `LLMConfig`, prints the endpoint and serves until Ctrl-C / SIGTERM, then
shuts Serve and Ray down. Every replica is a vLLM engine of its own; the plugin
comes with the `.venv` every Ray worker here runs in (docs/scaling.md).
"""

import argparse
import os
import signal
import threading

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def load_config(args: argparse.Namespace) -> dict:
    """The config file's first application, with the command line's overrides."""
    with open(args.config) as f:
        config = yaml.safe_load(f)
    app = config["applications"][0]
    llm = app["args"]["llm_configs"][0]
    if args.model:
        llm["model_loading_config"]["model_source"] = args.model
    source = llm["model_loading_config"]["model_source"]
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise SystemExit(f"no checkpoint at {source!r}; write one with "
                         f"`.venv/bin/iaa-vllm init {source} --preset tiny`")
    # Replicas do not start in this directory: hand them an absolute path.
    llm["model_loading_config"]["model_source"] = os.path.abspath(source)
    scaling = llm["deployment_config"]["autoscaling_config"]
    if args.min_replicas is not None:
        scaling["min_replicas"] = args.min_replicas
    if args.max_replicas is not None:
        scaling["max_replicas"] = args.max_replicas
    scaling["initial_replicas"] = max(scaling["min_replicas"],
                                      min(scaling.get("initial_replicas", 1), scaling["max_replicas"]))
    if args.port is not None:
        config["http_options"]["port"] = args.port
    return config


def start_ray(num_cpus: int, attempts: int = 3) -> None:
    """A fresh local Ray node of our own (address="local": never one found via RAY_ADDRESS).

    Ray 2.60's raylet waits a fixed 15 s for its dashboard agent to report its
    ports and aborts the node otherwise; on a loaded machine the agent's imports
    alone take longer. A second try finds them in the page cache.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
            return
        except Exception as error:  # ray raises a bare Exception for this
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise
            print(f"Ray node start timed out (attempt {attempt} of {attempts}); retrying", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "ray_serve.yaml"), help="Ray Serve config file")
    parser.add_argument("--model", help="IAA checkpoint directory (default: the config's model_source)")
    parser.add_argument("--port", type=int, help="HTTP port (default: the config's)")
    parser.add_argument("--min-replicas", type=int, help="autoscaling lower bound")
    parser.add_argument("--max-replicas", type=int, help="autoscaling upper bound")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(),
                        help="logical CPUs of the local Ray node; one per CPU replica")
    args = parser.parse_args()
    config = load_config(args)
    app, http = config["applications"][0], config["http_options"]

    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    start_ray(args.num_cpus)
    try:
        serve.start(http_options=http, proxy_location=config.get("proxy_location", "HeadOnly"))
        serve.run(build_openai_app(app["args"]), name=app["name"], route_prefix=app["route_prefix"])
        scaling = app["args"]["llm_configs"][0]["deployment_config"]["autoscaling_config"]
        # Ray's Prometheus endpoint: per-replica counters such as ray_vllm_request_success_total{ReplicaId=...}.
        metrics = f"http://127.0.0.1:{ray._private.worker._global_node.metrics_export_port}/metrics"
        print(f"serving on http://{http['host']}:{http['port']}/v1 "
              f"({scaling['min_replicas']}-{scaling['max_replicas']} replicas); metrics: {metrics}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    print("shut down", flush=True)


if __name__ == "__main__":
    main()
