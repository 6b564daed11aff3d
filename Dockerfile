# GPU image for benchmark runs: CUDA PyTorch base plus exactly the pins the tests use.
# tools/check_images.sh builds it with BASE_IMAGE set to a CPU Python 3.11 image.
ARG BASE_IMAGE=docker.io/pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# The building host's own package indexes, if it has any (tools/check_images.sh passes them);
# empty, pip uses PyPI.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
WORKDIR /workspace/mixtral
COPY requirements.txt ./
# requirements.txt pins torch 2.13.0; on Linux x86_64 PyPI serves its CUDA build.
RUN python -m pip install -r requirements.txt
COPY . .
CMD ["python", "main.py", "--help"]
