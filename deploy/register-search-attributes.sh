#!/bin/sh
# Create Unstuck's custom search attributes (infra/settings.py SEARCH_ATTRIBUTES).
# Safe to run again: an attribute that already exists is left alone.
set -eu
for pair in TicketStatus=Keyword Phase=Keyword OpenTasks=Int StuckSince=Datetime Diagnoses=Int Restarts=Int AnomalyScore=Double EscalationSeverity=Keyword; do
  name="${pair%%=*}"; type="${pair#*=}"
  temporal operator search-attribute create --namespace default --name "$name" --type "$type" \
    || echo "search attribute $name already exists"
done
