# dbmux container image (used by compose.yaml).
FROM rust:1.85-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin dbmux

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dbmux /usr/local/bin/dbmux
EXPOSE 3307 9187
ENTRYPOINT ["dbmux"]
CMD ["run", "--config", "/etc/dbmux/dbmux.toml"]
