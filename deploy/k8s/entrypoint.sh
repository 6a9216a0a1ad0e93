#!/bin/sh
# Container entrypoint of deploy/k8s/pretrain.yaml: joins this pod to the job's
# processes, then runs `run.py "$@"`. What each variable holds:
#   JOB_COMPLETION_INDEX  this pod's index in the Indexed Job (0 .. completions-1);
#                         pod 0 hosts JAX's coordinator
#   NUM_PROCESSES         the Job's completions (= parallelism): all pods run at once
#   COORDINATOR_ADDRESS   host:port of pod 0: <job>-0.<headless service>, a DNS name
#                         that exists from pod creation (publishNotReadyAddresses)
# PYTHON: the interpreter (default `python`, the image's).
set -eu
: "${JOB_COMPLETION_INDEX:?not set: run this in an Indexed Job (completionMode: Indexed)}"
: "${NUM_PROCESSES:?not set: the Job's completions}"
: "${COORDINATOR_ADDRESS:?not set: pod 0 as <job>-0.<service>:<port>}"
exec "${PYTHON:-python}" run.py "$@" --coordinator_address="$COORDINATOR_ADDRESS" \
  --num_processes="$NUM_PROCESSES" --process_id="$JOB_COMPLETION_INDEX"
