# A ledger validator: onionpost-ledger, and onionpost-devnet for the health check (the
# height advances). Built by docker/build-images.sh, which passes BASE (the debootstrap image).
ARG BASE
FROM ${BASE}
# iproute2: the partition tests cut links with `ip route add blackhole` (cap NET_ADMIN).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY onionpost-ledger onionpost-devnet /usr/local/bin/
# The validator's home (config.toml, genesis.json, validator.key, data/) is mounted at /home/validator.
CMD ["onionpost-ledger", "validator", "--home", "/home/validator"]
