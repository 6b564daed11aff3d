# GPU image for benchmark runs: CUDA PyTorch base plus exactly the pins the tests use.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /workspace/mixtral
COPY requirements.txt ./
# requirements.txt pins torch 2.13.0; on Linux x86_64 PyPI serves its CUDA build.
RUN python -m pip install -r requirements.txt
COPY . .
CMD ["python", "main.py", "--help"]
