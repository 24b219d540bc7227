# The Unstuck worker image (docker-compose.yml builds it).
FROM python:3.11.10-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY models ./models
COPY core ./core
COPY diagnosis ./diagnosis
COPY validation ./validation
COPY runtimes ./runtimes
COPY agents ./agents
COPY workflows ./workflows
COPY activities ./activities
COPY ledger ./ledger
COPY agent_client ./agent_client
COPY infra ./infra
COPY cli ./cli
COPY worker.py starter.py ./
# The sources' bytecode is written at build time: as nobody the worker could not write it,
# and every ticket it loads (the workflow sandbox imports workflows/ afresh) would compile
# workflows/ticket.py again (5 ms each time, 15 % of the worker's CPU when tickets escalate
# together).
RUN pip install --no-cache-dir . && python -m compileall -q /app
USER nobody
CMD ["python", "worker.py", "--no-dev-server"]
