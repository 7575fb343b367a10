"""The conformance scenarios: every test here runs once per chosen driver.

Run them with ``pytest --pyargs spcore.conformance.scenarios`` (options ``--spcore-driver``
and ``--spcore-driver-factory``) or ``spcore.conformance.run()``.
"""
