# A mail node: onionpost-node; swaks and curl, the SMTP submission and IMAP clients, run
# inside the container because the node's client listeners are loopback-only; and
# onionpost-devnet for the health check (every identity's onion service is published);
# libsqlite3 and libssl: arti links them.
# Built by docker/build-images.sh, which passes BASE (the debootstrap image).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swaks curl libsqlite3-0 libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY onionpost-node onionpost-devnet /usr/local/bin/
ENV ONIONPOST_HOME=/home/node
# The home (identities, mailboxes, queue, node.toml) is mounted at /home/node.
CMD ["onionpost-node", "run", "--config", "/home/node/node.toml"]
