# The one image of lstmclf: cluster.yaml (docker.image) and k8s/ (the kustomize image entry) run it on
# every node. Ray's official GPU image of the Ray and Python versions pyproject.toml pins, with the
# project, its pinned dependencies and a torch built for the image's CUDA. Build from the repository root
# and push where your nodes can pull it:
#
#   docker build -t 123456789012.dkr.ecr.us-east-1.amazonaws.com/lstmclf:0.1.0 .
#   docker push 123456789012.dkr.ecr.us-east-1.amazonaws.com/lstmclf:0.1.0
#
# CUDA_TAG picks both the base image and the torch wheels (https://download.pytorch.org/whl/<CUDA_TAG>);
# the nodes' NVIDIA driver must support that CUDA.
ARG RAY_VERSION=2.58.0
ARG PYTHON_TAG=py311
ARG CUDA_TAG=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}
ARG RAY_VERSION
ARG CUDA_TAG

# The base image's own non-root user (uid 1000, gid 100), whose Python environment everything goes into.
USER ray
WORKDIR /home/ray/lstmclf

# Dependencies first, in a layer that code changes keep: pyproject.toml's list, as pinned there. torch and
# torchvision come from the CUDA_TAG index (2.14.1+cu128 satisfies ==2.14.1 and outranks PyPI's 2.14.1).
COPY --chown=ray:users pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *p['optional-dependencies']['tune'], sep='\n')" > /tmp/requirements.txt \
 && pip install --no-cache-dir --extra-index-url "https://download.pytorch.org/whl/${CUDA_TAG}" -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The package, and jobs/ beside it: the RayJob runs /home/ray/lstmclf/jobs/tune.py.
COPY --chown=ray:users README.md ./
COPY --chown=ray:users lstmclf ./lstmclf
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import ray, torch, lstmclf; \
assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
assert 'cu' + torch.version.cuda.replace('.', '') == '${CUDA_TAG}', torch.version.cuda"
