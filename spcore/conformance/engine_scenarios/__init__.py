"""The engine certification kit: what any TLS engine must do, ours or a third party's.

Each module pins behaviours that TLS over memory buffers must get right, as other projects
learnt them (each module's docstring says from whom, with links upstream).

Run with ``pytest --pyargs spcore.conformance.engine_scenarios`` (every registered engine) or
``--spcore-engine-factory mypkg.tls:ENGINE`` for yours; see docs/tls-engine.md.
"""
