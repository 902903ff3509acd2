#!/bin/sh
# Offline validation of docker-compose.yml and the k8s overlays; see deploy/validate.py.
# Tools: pip install -r deploy/requirements-validate.txt; apt-get install $(cat deploy/apt-validate.txt); kubectl.
exec python3 "$(dirname "$0")/validate.py" "$@"
