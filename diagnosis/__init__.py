"""Diagnosis of stuck tickets (DESIGN §5): redaction, the rule engine, the LLM provider.

Everything here is plain Python over the models of :mod:`models.diagnosis`, with no
Temporal imports: ``activities/diagnosis.py`` is the only I/O shell around it.

* :mod:`diagnosis.redact`: secrets out of every string that leaves the ticket;
* :mod:`diagnosis.evidence`: the evidence size cap;
* :mod:`diagnosis.rules`: the built-in rule engine and the recovery planner;
* :mod:`diagnosis.llm`: the optional OpenAI-compatible provider, with the rules as fallback.
"""
