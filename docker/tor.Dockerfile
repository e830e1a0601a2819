# Authorities and relays of the devnet's private Tor network: Debian's tor, and
# onionpost-devnet for the health check (an authority's consensus lists this node).
# Built by docker/build-images.sh, which passes BASE (the debootstrap image).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tor \
 && rm -rf /var/lib/apt/lists/*
COPY onionpost-devnet /usr/local/bin/
# The torrc and the keys come from `onionpost-devnet compose init`, mounted at /tor.
CMD ["tor", "-f", "/tor/torrc"]
