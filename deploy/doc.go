// Package deploy holds no code: its tests check what ships around the
// binary. The Dockerfile's build (a static binary, built here the same way),
// the Helm chart in charts/scanhook (linted and rendered with the real helm
// CLI, every manifest decoded strictly into its Kubernetes type, the rendered
// config and rules run through scanhook's own loaders), the values files of
// docs/deploy.md (rendered with the chart), and the sender examples of
// docs/sources.md (each body fed to the real decoder).
package deploy
