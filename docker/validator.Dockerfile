# A ledger validator: onionpost-ledger, and onionpost-devnet for the health check (the
# height advances). Built by docker/build-images.sh, which passes BASE (the debootstrap image).
ARG BASE
FROM ${BASE}
COPY onionpost-ledger onionpost-devnet /usr/local/bin/
# The validator's home (config.toml, genesis.json, validator.key, data/) is mounted at /home/validator.
CMD ["onionpost-ledger", "validator", "--home", "/home/validator"]
