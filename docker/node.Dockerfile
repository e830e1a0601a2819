# A mail node: onionpost-node, and onionpost (the ledger CLI, acting as a node identity for
# list administration); swaks and curl, the SMTP submission and IMAP clients, run
# inside the container because the node's client listeners are loopback-only; and
# onionpost-devnet for the health check (every identity's onion service is published);
# libsqlite3 and libssl: arti links them; tor: a C tor client (SOCKS on the container's
# loopback) through which the health check reaches the node's onion services from outside.
# Built by docker/build-images.sh, which passes BASE (the debootstrap image).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swaks curl libsqlite3-0 libssl3 tor \
 && rm -rf /var/lib/apt/lists/*
COPY onionpost-node onionpost-devnet onionpost /usr/local/bin/
ENV ONIONPOST_HOME=/home/node
# The home (identities, mailboxes, queue, node.toml) is mounted at /home/node.
# The probe's tor runs beside the node; the container's init (compose `init: true`) reaps it.
CMD ["sh", "-c", "tor -f /home/node/tor-probe/torrc --quiet & exec onionpost-node run --config /home/node/node.toml"]
