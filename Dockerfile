# scanhook: a static binary on distroless, running as nonroot with no shell.
#   docker build --build-arg VERSION=$(git describe --tags --always) -t scanhook .
#   az acr build --registry <acr> --image scanhook:<version> --build-arg VERSION=<version> .
# deploy/image_test.go builds the binary with the same flags (CI has no
# Docker engine); change both together.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Set by BuildKit for multi-platform builds; empty means the builder's own.
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=linux GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/scanhook ./cmd/scanhook

# distroless/static has CA certificates, tzdata and the nonroot user
# (65532), and nothing else: no shell, no package manager, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/scanhook /scanhook
# Numeric, so that Kubernetes can verify runAsNonRoot without /etc/passwd.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/scanhook"]
CMD ["serve", "--config", "/etc/scanhook/config.yaml"]
