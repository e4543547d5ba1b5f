"""OCI image builds of the scikit-learn example: cold, warm and code-change times, and image sizes.

Builds ``examples/sklearn_digits`` (as a git repository) into a fresh registry three
times and prints the figures next to the reference system's (6 min 20 s for a small
scikit-learn project, 3 min 53 s of it for the base image; images of several GB):

1. cold: an empty container storage (a temporary directory): debootstrap base,
   dependency image, thin learner/aggregator images, all pushed;
2. warm: the same commit again: everything is found in the registry, no buildah runs;
3. code change: one edited file: only the thin layer is rebuilt.

``--reuse-cache`` uses the normal FLOps container storage instead of an empty one, so
"cold" then means "empty registry, images already built on this machine".

    .venv/bin/python benchmarks/image_build.py [--reuse-cache] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import note, print_json, print_table  # noqa: E402
from flops_utils.service_config import BuilderConfig, MqttSettings, RegistrySettings  # noqa: E402
from manager.suite import start_suite, stop_suite  # noqa: E402
from services.builder.oci import ContainerEngine, EngineSettings, OciBuildResult, OciSettings, build_images  # noqa: E402
from services.builder.oci.naming import human_size  # noqa: E402
from tests.example_repos import commit_all, example_repo  # noqa: E402

REFERENCE_BUILD_S = 380.0  # 6 min 20 s (thesis figure for a scikit-learn MNIST project)
REFERENCE_BASE_S = 233.0  # 3 min 53 s of it for the base image
REFERENCE_SIZE = "several GB"


def _config(repo: Path, registry: RegistrySettings, cache: Path) -> BuilderConfig:
    return BuilderConfig(project_id="bench", mqtt=MqttSettings(), repo_url=str(repo), flavor="sklearn",
                         cache_dir=str(cache), mode="oci", registry=registry)


def _build(label: str, repo: Path, registry: RegistrySettings, root: Path, cache: Path) -> tuple[float, OciBuildResult]:
    engine = ContainerEngine(EngineSettings(root=root))
    note(f"{label} build ...")
    started = time.monotonic()
    result = build_images(_config(repo, registry, cache), settings=OciSettings(registry=registry), engine=engine)
    seconds = time.monotonic() - started
    steps = ", ".join(f"{record.step} {record.outcome} {record.duration_s:.1f} s" for record in result.steps
                      if record.step.endswith("-image"))
    note(f"{label} build: {seconds:.1f} s ({steps}); buildah commands: {len(engine.mutating_commands())}")
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse-cache", action="store_true", help="use the normal FLOps container storage")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="flops-image-bench-"))
    root = EngineSettings().root if args.reuse_cache else work / "containers"
    suite_dir = work / "suite"
    try:
        endpoints = start_suite(suite_dir, registry=True)
        assert endpoints.registry is not None
        registry = endpoints.registry.settings()
        repo = Path(example_repo("sklearn_digits", work / "repos"))
        cold_s, cold = _build("cold", repo, registry, root, work / "cache")
        warm_s, warm = _build("warm", repo, registry, root, work / "cache")
        if not warm.cached:
            raise SystemExit("the warm build was not a cache hit")
        (repo / "model_manager.py").write_text((repo / "model_manager.py").read_text() + "\n# benchmark edit\n")
        commit_all(repo, "code change")
        change_s, changed = _build("code-change", repo, registry, root, work / "cache")

        base_s = sum(record.duration_s for record in cold.steps if record.step.startswith("base-image"))
        images = {"base": cold.base[0] if cold.base else None, "deps": cold.deps[0], "learner": cold.learner,
                  "aggregator": cold.aggregator}
        print_table(["figure", "FLOps", "reference"], [
            ["cold build (s)", round(cold_s, 1), REFERENCE_BUILD_S],
            ["  of it: base image (s)", round(base_s, 1), REFERENCE_BASE_S],
            ["warm build, same commit (s)", round(warm_s, 1), "rebuilt"],
            ["code-change build (s)", round(change_s, 1), "rebuilt"],
            *[[f"{name} image size", f"{human_size(image.size_bytes)} ({human_size(image.compressed_bytes)} "
               "compressed)", REFERENCE_SIZE] for name, image in images.items() if image is not None],
        ], title="OCI image build, examples/sklearn_digits" + (" (reused local image cache)" if args.reuse_cache
                                                                else " (empty image cache)"))
        print_json("image_build", {
            "reuse_cache": args.reuse_cache, "cold_s": round(cold_s, 1), "base_image_s": round(base_s, 1),
            "warm_s": round(warm_s, 1), "code_change_s": round(change_s, 1),
            "thin_layer_rebuilt_only": changed.deps[0].reference == cold.deps[0].reference,
            "sizes": {name: {"bytes": image.size_bytes, "compressed_bytes": image.compressed_bytes}
                      for name, image in images.items() if image is not None},
            "reference": {"build_s": REFERENCE_BUILD_S, "base_image_s": REFERENCE_BASE_S, "size": REFERENCE_SIZE},
        })
    finally:
        stop_suite(suite_dir)
        if not args.keep:
            if not args.reuse_cache:
                engine = ContainerEngine(EngineSettings(root=root))
                engine.run("buildah", ["rm", "--all"], check=False, timeout=300)
                shutil.rmtree(engine.run_root(), ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
