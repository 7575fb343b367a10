"""The engine certification kit: what any TLS engine must do, ours or a third party's.

Run with ``pytest --pyargs spcore.conformance.engine_scenarios`` (every registered engine) or
``--spcore-engine-factory mypkg.tls:ENGINE`` for yours; see docs/tls-engine.md.
"""
