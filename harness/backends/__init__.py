"""Generation backends: the protocol the SUT uses (protocol.py), one module per engine (hf_static.py,
hf_inflight.py, vllm_engine.py, openai_api.py over its HTTP client openai_client.py), the loop the
streaming engines share (streaming.py) and the factory that builds them from a run's flags
(factory.py). Engine modules are imported only when used, so torch, transformers and vLLM load late."""
