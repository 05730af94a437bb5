# syntax=docker/dockerfile:1
# nudged and nudgectl in a minimal image: static binaries (CGO off), run as
# a non-root user, CA certificates from the base image, time zones embedded
# in nudged (time/tzdata, imported by package decision).
#
#   docker build -t nudge:dev .          (make docker)
#   docker run --rm -p 127.0.0.1:7070:7070 nudge:dev --listen 0.0.0.0:7070 --insecure
#
# nudged listens on loopback unless told otherwise, and refuses a
# non-loopback address without tokens and TLS (or --insecure): configure it
# with NUDGE_* variables, flags, or a mounted --config file
# (deploy/compose.yaml, deploy/kubernetes/, docs/deploy.md).
#
# The binaries carry the commit they were built from (nudged --version):
# the build context includes .git, and go build stamps it. Build with
# --build-arg GOFLAGS=-buildvcs=false where that cannot work (a git
# worktree, whose .git is a file pointing outside the context).

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG GOFLAGS=""
WORKDIR /src
ENV GOCACHE=/cache/go-build
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# The same command as `make static` (mk/deploy.mk checks that it stays so).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/ ./cmd/nudged ./cmd/nudgectl

# distroless static: CA certificates, /etc/passwd with the nonroot user
# (65532), no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/nudged /out/nudgectl /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 7070 gRPC; 7080 HTTP/JSON, /healthz and /readyz (http.listen);
# 9090 Prometheus /metrics (metrics.listen).
EXPOSE 7070 7080 9090
ENTRYPOINT ["/usr/local/bin/nudged"]
