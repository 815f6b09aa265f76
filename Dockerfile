# Builds the lumina binary; used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lumina

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lumina /usr/local/bin/lumina
ENV LUMINA_LOG=info
EXPOSE 8080
ENTRYPOINT ["lumina"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
