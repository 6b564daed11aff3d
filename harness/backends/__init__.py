"""Generation backends: the protocol the SUT uses (protocol.py) and one module per engine
(hf_static.py, hf_inflight.py, vllm_engine.py, openai_api.py over its HTTP client openai_client.py).
Engine modules are imported only when used, so torch, transformers and vLLM load late."""
