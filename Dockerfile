# syntax=docker/dockerfile:1
# The gbrain image: one binary for every role (`gbrain serve ingest|query|inference|coordinator`),
# as the Helm chart (helm/globalbrain) and deploy/docker-compose.yaml run it.
#
#   docker build -t gbrain:dev .
#
# GPU inference (CUDA execution provider): build the inference feature and take ONNX Runtime
# from onnxruntime-gpu, on a runtime base that has CUDA 13 and cuDNN 9 (see README.md, CUDA):
#
#   docker build -t gbrain-cuda:dev --build-arg CARGO_FEATURES=gbrain-inference/cuda \
#     --build-arg ORT_PACKAGE=onnxruntime-gpu --build-arg RUNTIME_BASE=<a CUDA 13 + cuDNN 9 image> .

ARG RUST_VERSION=1.95.0
ARG RUNTIME_BASE=debian:bookworm-slim

# protoc needs no installing: crates/proto's build script runs the one the protoc-bin-vendored
# crate ships (with the google/protobuf includes), and nothing else in the tree calls protoc.
FROM rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
ARG CARGO_FEATURES=""
# The image's toolchain is the one rust-toolchain.toml pins; naming it keeps rustup from
# fetching the file's extra components (rustfmt, clippy), which a release build does not use.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gbrain-cli --bin gbrain \
      ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} \
    && install -D -m 0755 target/release/gbrain /out/gbrain

# ONNX Runtime's shared library, from the same PyPI wheel the tests use. ort loads it at run
# time (load-dynamic), and it must be 1.31.1: an older one fails with BadVersion.
FROM python:3.12-slim-bookworm AS ort
ARG ORT_PACKAGE=onnxruntime
RUN pip install --no-cache-dir --no-deps --target /ort "${ORT_PACKAGE}==1.31.1" \
    && mkdir -p /out \
    && cp /ort/onnxruntime/capi/libonnxruntime.so.1.31.1 /out/ \
    && cp /ort/onnxruntime/capi/libonnxruntime_providers_*.so /out/

FROM ${RUNTIME_BASE}
# CA roots for S3 over HTTPS; libstdc++ for ONNX Runtime. Unpinned on purpose: the base's
# security updates replace these versions, and the CA roots must stay current.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 gbrain \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gbrain \
    && mkdir -p /var/lib/gbrain /var/spill \
    && chown 10001:10001 /var/lib/gbrain /var/spill
COPY --from=ort /out/ /opt/onnxruntime/
COPY --from=build /out/gbrain /usr/local/bin/gbrain
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1 \
    GBRAIN_LISTEN=0.0.0.0:50051 \
    GBRAIN_HTTP=0.0.0.0:8080 \
    GBRAIN_LOG_FORMAT=json
USER 10001:10001
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/gbrain"]
CMD ["--help"]
