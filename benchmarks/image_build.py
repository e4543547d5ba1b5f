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

``--platforms linux/amd64,linux/arm64`` builds both (arm64 under qemu-user-static
emulation: ``make install`` enables it) and pushes manifest lists; the table then gives
each platform's cold build time (the arm64 one beside the reference's 18 minutes) and
every image's size per platform.

    .venv/bin/python benchmarks/image_build.py [--reuse-cache] [--keep] [--platforms linux/amd64,linux/arm64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
REFERENCE_ARM64_S = 18 * 60.0  # the reference's arm64 image build under emulation
REFERENCE_IMAGE_SIZE = "2.8-3.6 GB"


def _config(repo: Path, registry: RegistrySettings, cache: Path, platforms: list[str]) -> BuilderConfig:
    return BuilderConfig(
        project_id="bench",
        mqtt=MqttSettings(),
        repo_url=str(repo),
        flavor="sklearn",
        cache_dir=str(cache),
        mode="oci",
        registry=registry,
        platforms=platforms,
    )


def _build(
    label: str, repo: Path, registry: RegistrySettings, root: Path, cache: Path, platforms: list[str]
) -> tuple[float, OciBuildResult]:
    engine = ContainerEngine(EngineSettings(root=root))
    note(f"{label} build ...")
    started = time.monotonic()
    result = build_images(
        _config(repo, registry, cache, platforms), settings=OciSettings(registry=registry), engine=engine
    )
    seconds = time.monotonic() - started
    steps = ", ".join(
        f"{record.step} {record.outcome} {record.duration_s:.1f} s"
        for record in result.steps
        if record.step.split()[0].endswith("-image")
    )
    note(f"{label} build: {seconds:.1f} s ({steps}); buildah commands: {len(engine.mutating_commands())}")
    return seconds, result


def _per_platform(result: OciBuildResult) -> dict[str, dict[str, Any]]:
    """Per platform: the seconds its image steps took, its base step, and each image's size."""
    names = list(result.platform_images["learner"])
    figures: dict[str, dict[str, Any]] = {}
    for platform in names:
        mine = [
            record
            for record in result.steps
            if record.step.split()[0].endswith("-image") and (len(names) == 1 or record.step.endswith(f" {platform}"))
        ]
        sizes = {
            record.step.split()[0].removesuffix("-image"): {
                "bytes": record.size_bytes,
                "compressed_bytes": record.compressed_bytes,
            }
            for record in mine
        }
        figures[platform] = {
            "seconds": round(sum(record.duration_s for record in mine), 1),
            "base_s": round(sum(record.duration_s for record in mine if record.step.startswith("base-image")), 1),
            "sizes": sizes,
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse-cache", action="store_true", help="use the normal FLOps container storage")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--platforms", default="", help="comma-separated, e.g. linux/amd64,linux/arm64")
    args = parser.parse_args(argv)
    platforms = [item.strip() for item in args.platforms.split(",") if item.strip()]

    work = Path(tempfile.mkdtemp(prefix="flops-image-bench-"))
    root = EngineSettings().root if args.reuse_cache else work / "containers"
    suite_dir = work / "suite"
    try:
        endpoints = start_suite(suite_dir, registry=True)
        assert endpoints.registry is not None
        registry = endpoints.registry.settings()
        repo = Path(example_repo("sklearn_digits", work / "repos"))
        load = os.getloadavg()
        cold_s, cold = _build("cold", repo, registry, root, work / "cache", platforms)
        warm_s, warm = _build("warm", repo, registry, root, work / "cache", platforms)
        if not warm.cached:
            raise SystemExit("the warm build was not a cache hit")
        (repo / "model_manager.py").write_text((repo / "model_manager.py").read_text() + "\n# benchmark edit\n")
        commit_all(repo, "code change")
        change_s, changed = _build("code-change", repo, registry, root, work / "cache", platforms)
        load_after = os.getloadavg()

        per_platform = _per_platform(cold)
        rows: list[list[object]] = [
            ["cold build, all platforms (s)", round(cold_s, 1), REFERENCE_BUILD_S],
            ["warm build, same commit (s)", round(warm_s, 1), "rebuilt"],
            ["code-change build (s)", round(change_s, 1), "rebuilt"],
        ]
        for platform, figures in per_platform.items():
            reference = REFERENCE_ARM64_S if platform.endswith("arm64") else REFERENCE_BUILD_S
            rows.append([f"cold build {platform} (s)", figures["seconds"], reference])
            rows.append(
                [
                    f"  of it: base image {platform} (s)",
                    figures["base_s"],
                    REFERENCE_BASE_S if reference == REFERENCE_BUILD_S else "-",
                ]
            )
            for kind, size in figures["sizes"].items():
                rows.append(
                    [
                        f"{kind} image {platform}",
                        f"{human_size(size['bytes'])} ({human_size(size['compressed_bytes'])} compressed)",
                        REFERENCE_IMAGE_SIZE,
                    ]
                )
        rows.append(["load average before / after (2 cores)", f"{load[0]:.1f} / {load_after[0]:.1f}", "-"])
        cache_note = " (reused local image cache)" if args.reuse_cache else " (empty image cache)"
        print_table(
            ["figure", "FLOps", "reference"], rows, title="OCI image build, examples/sklearn_digits" + cache_note
        )
        print_json(
            "image_build",
            {
                "reuse_cache": args.reuse_cache,
                "platforms": list(per_platform),
                "cold_s": round(cold_s, 1),
                "warm_s": round(warm_s, 1),
                "code_change_s": round(change_s, 1),
                "per_platform": per_platform,
                "thin_layer_rebuilt_only": changed.deps[0].reference == cold.deps[0].reference,
                "load_average": [round(load[0], 2), round(load_after[0], 2)],
                "reference": {
                    "build_s": REFERENCE_BUILD_S,
                    "base_image_s": REFERENCE_BASE_S,
                    "size": REFERENCE_SIZE,
                    "arm64_build_s": REFERENCE_ARM64_S,
                },
            },
        )
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
