package deploy_test

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dockerBuild matches the Dockerfile's build command; the test builds the
// binary with the same flags (there is no Docker engine in CI).
var dockerBuild = regexp.MustCompile(`RUN CGO_ENABLED=0 GOOS=linux GOARCH=\$TARGETARCH \\\n\s*go build -trimpath -ldflags "-s -w -X main.version=\$\{VERSION\}" -o /out/scanhook ./cmd/scanhook\n`)

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	if !dockerBuild.MatchString(df) {
		t.Error("the Dockerfile's go build no longer matches what TestStaticBinary builds; change both together")
	}
	var stages, final []string
	for line := range strings.Lines(df) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "FROM ") {
			stages = append(stages, line)
			final = nil
		}
		final = append(final, line)
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}
	if last := stages[len(stages)-1]; !strings.Contains(last, "gcr.io/distroless/static") || !strings.HasSuffix(last, ":nonroot") {
		t.Errorf("final stage %q, want distroless static:nonroot", last)
	}
	want := []string{
		"COPY --from=build /out/scanhook /scanhook",
		"USER 65532:65532",
		`ENTRYPOINT ["/scanhook"]`,
		`CMD ["serve", "--config", "/etc/scanhook/config.yaml"]`,
	}
	for _, w := range want {
		found := false
		for _, l := range final {
			found = found || l == w
		}
		if !found {
			t.Errorf("final stage lacks %q", w)
		}
	}
	for _, l := range final {
		// Only exec-form instructions: the image has no shell to run the other form.
		if strings.HasPrefix(l, "RUN ") || (strings.HasPrefix(l, "ENTRYPOINT ") || strings.HasPrefix(l, "CMD ")) && !strings.Contains(l, "[") {
			t.Errorf("final stage needs a shell: %q", l)
		}
	}

	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{".git", "**/*_test.go", "**/testdata", "charts"} {
		if !strings.Contains(string(ignore), "\n"+w+"\n") {
			t.Errorf(".dockerignore does not leave out %s", w)
		}
	}
}

// TestStaticBinary builds cmd/scanhook as the Dockerfile does and checks
// that it runs on an image with no libc: no ELF interpreter, no shared
// libraries, and that the version stamp reaches `scanhook version`.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "scanhook")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const version = "v9.8.7-test"
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/scanhook")
	build.Dir = ".."
	// -race is not inherited by a child go build, and cgo off is the point.
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter: it is dynamically linked")
		}
		if p.Type == elf.PT_DYNAMIC {
			t.Error("the binary has a dynamic section")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("shared libraries %v (%v), want none", libs, err)
	}
	if s := f.Section(".symtab"); s != nil {
		t.Error("symbol table present: -s did not strip it")
	}

	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("scanhook version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), version) {
		t.Errorf("scanhook version printed %q, want it to contain %q", out, version)
	}
	// -trimpath: no path of this machine is baked into the binary.
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := filepath.Abs("..")
	if strings.Contains(string(data), wd) {
		t.Errorf("the binary contains the build path %s: -trimpath missing", wd)
	}
}
