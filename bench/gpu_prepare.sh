#!/usr/bin/env bash
# Builds .gpu/ (ignored) for bench/gpu.sh, here, before a lent GPU machine starts: the run tool carries it
# there (`carry: [".gpu"]`, 64 MiB at most). That machine has Python 3.12 with its own CUDA torch and many
# packages (bench/gpu_machine_packages.txt), no Ray, and no package registry, so .gpu/ holds:
#   mnist/         the four MNIST files
#   site.tar.xz    a CPython 3.12 x86-64 site-packages with what the jobs need there and the machine lacks:
#                  Ray 2.58 with its default, train and tune extras and their dependencies, and the newer
#                  typing_extensions, protobuf and aiohttp (with its family) that this Ray needs
#
#   bash bench/gpu_prepare.sh [MNIST_DIR]      # from the repo root; MNIST_DIR defaults to ../shared/data/mnist
#   HAVE=list.txt bash bench/gpu_prepare.sh    # another machine's packages, one name (or name==version) a line
#
# Wheels only (no builds), resolved by pip for that interpreter and platform at the versions .venv has;
# a few minutes, most of them xz.
set -euo pipefail
cd "$(dirname "$0")/.."
mnist=${1:-../shared/data/mnist}
have=${HAVE:-bench/gpu_machine_packages.txt}
pip=(.venv/bin/python -m pip)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
# What the jobs import there (boto3 is for S3 storage only: not needed). The machine's own copies serve, but
# for typing_extensions, protobuf and aiohttp, whose older copies there break pydantic 2.14, the OpenTelemetry
# protos and ray[default] (aiohttp >= 3.14.1): those are carried, aiohttp with its family.
pkgs=("ray[default,train,tune]==2.58.0" torchmetrics pyarrow pyyaml scipy matplotlib "typing_extensions>=4.16"
    "protobuf>=7.36" "aiohttp>=3.14.1")

echo "resolving for CPython 3.12 on manylinux x86-64, at the versions .venv has where it has them"
"${pip[@]}" freeze --exclude-editable | grep -Eiv '^(torch|torchvision|triton|nvidia-)' >"$work/venv.txt"
"${pip[@]}" install -q --dry-run --ignore-installed --report "$work/report.json" --target "$work/none" \
    -c "$work/venv.txt" "${target[@]}" "${pkgs[@]}"
# Less what the machine has; torch's closure and numpy always (its torch build was made against them).
.venv/bin/python - "$work/report.json" "$have" >"$work/wanted.txt" <<'PY'
import json, re, sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

names = (line.split("#")[0].split("==")[0].strip() for line in open(sys.argv[2]))
have = {norm(n) for n in names if n} | {"torch", "triton", "numpy", "sympy", "mpmath", "networkx", "jinja2",
                                        "markupsafe", "filelock", "fsspec", "setuptools"}
override = {"typing-extensions", "protobuf", "aiohttp", "multidict", "yarl", "propcache", "frozenlist",
            "aiosignal", "aiohappyeyeballs"}
for item in json.load(open(sys.argv[1]))["install"]:
    name = norm(item["metadata"]["name"])
    if (name in override or name not in have) and not name.startswith(("nvidia-", "cuda-")):
        print(f"{name}=={item['metadata']['version']}")
PY
echo "$(wc -l <"$work/wanted.txt") packages to carry: $(tr '\n' ' ' <"$work/wanted.txt")"
"${pip[@]}" download -q --no-deps -d "$work/wheels" "${target[@]}" -r "$work/wanted.txt"
"${pip[@]}" install -q --no-deps --no-compile --target "$work/site" "${target[@]}" "$work"/wheels/*.whl

# What no step of bench/gpu.sh imports: console scripts, the Java jars, RLlib, Serve, LLM, source maps.
site=$work/site
rm -rf "$site"/bin "$site"/ray/{jars,rllib,serve,llm} "$site"/virtualenv/seed/wheels/embed/*.whl
find "$site"/ray/dashboard -name '*.map' -delete
mkdir -p .gpu/mnist
cp "$mnist"/*-ubyte* .gpu/mnist/
tar -C "$site" -cf - . | xz -9e -T0 >.gpu/site.tar.xz
du -sh .gpu/site.tar.xz .gpu/mnist
size=$(du -sm .gpu | cut -f1)
((size <= 63)) || { echo "error: .gpu/ is ${size} MiB: the run tool carries 64 MiB at most" >&2; exit 1; }
echo ".gpu/ is ready (${size} MiB): run bench/gpu.sh with carry [\".gpu\"]"
