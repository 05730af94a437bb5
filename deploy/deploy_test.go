package deploy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/nudge-dm/nudge/internal/daemon"
)

const manifestDir = "kubernetes"

// kubeconform runs scripts/kubeconform.sh, the check of make lint-deploy,
// over the manifests in dir, and returns its output.
func kubeconform(t *testing.T, dir string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join("..", "scripts", "kubeconform.sh"), dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("scripts/kubeconform.sh did not run: %v\n%s", err, out)
	}
	return string(out), err
}

// manifests lists the manifests kubeconform checks: every *.yaml of dir
// but kustomization.yaml.
func manifests(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return filepath.Base(f) == "kustomization.yaml" })
	if len(files) == 0 {
		t.Fatalf("no manifests in %s", dir)
	}
	return files
}

// documents decodes every YAML document of a file.
func documents(t *testing.T, file string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var docs []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func TestKubernetesManifestsPassKubeconform(t *testing.T) {
	resources := 0
	for _, f := range manifests(t, manifestDir) {
		resources += len(documents(t, f))
	}
	out, err := kubeconform(t, manifestDir)
	if err != nil {
		t.Fatalf("kubeconform refused the manifests: %v\n%s", err, out)
	}
	// Every resource validated against a schema: none skipped, none
	// without one.
	want := "Valid: " + strconv.Itoa(resources) + ", Invalid: 0, Errors: 0, Skipped: 0"
	if !strings.Contains(out, want) {
		t.Fatalf("kubeconform's summary lacks %q:\n%s", want, out)
	}
}

// The same check must fail on a manifest with a mistake, or it proves
// nothing. Each case edits a copy of the manifests.
func TestKubeconformRejectsMistakes(t *testing.T) {
	tests := []struct {
		name      string
		file      string
		old, new  string // replaced once in file
		wantInOut string
	}{
		{
			name: "misspelt field", file: "deployment.yaml",
			old: "readOnlyRootFilesystem: true", new: "readOnlyRootFileSystem: true",
			wantInOut: "additional properties 'readOnlyRootFileSystem' not allowed",
		},
		{
			name: "field at the wrong level", file: "deployment.yaml",
			// fsGroup belongs to the pod's securityContext, not the container's
			old: "          allowPrivilegeEscalation: false\n", new: "          allowPrivilegeEscalation: false\n          fsGroup: 65532\n",
			wantInOut: "additional properties 'fsGroup' not allowed",
		},
		{
			name: "unknown metadata field", file: "configmap.yaml",
			old: "  name: nudged\n", new: "  name: nudged\n  namespce: nudge\n",
			wantInOut: "additional properties 'namespce' not allowed",
		},
		{
			name: "string for an integer", file: "hpa.yaml",
			old: "minReplicas: 2", new: `minReplicas: "2"`,
			wantInOut: "got string, want integer",
		},
		{
			name: "string for a list", file: "deployment.yaml",
			old: `args: ["--config", "/etc/nudge/config/nudged.yaml"]`, new: `args: --config /etc/nudge/config/nudged.yaml`,
			wantInOut: "got string, want array",
		},
		{
			name: "probe without its port", file: "deployment.yaml",
			old:       "          grpc:\n            port: 7070\n            service: nudge.v1.IngestService\n",
			new:       "          grpc:\n            service: nudge.v1.IngestService\n",
			wantInOut: "missing property 'port'",
		},
		{
			name: "duplicated key", file: "pdb.yaml",
			old: "  maxUnavailable: 1\n", new: "  maxUnavailable: 1\n  maxUnavailable: 2\n",
			wantInOut: "already set in map",
		},
		{
			name: "kind without a schema", file: "service.yaml",
			old:       "apiVersion: v1\nkind: Service\nmetadata:\n  name: nudged-headless",
			new:       "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: nudged-headless",
			wantInOut: "could not find schema for Ingress",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range manifests(t, manifestDir) {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if filepath.Base(f) == tt.file {
					if n := strings.Count(string(data), tt.old); n != 1 {
						t.Fatalf("%s: %q occurs %d times, want once: update the test with the manifest", tt.file, tt.old, n)
					}
					data = []byte(strings.Replace(string(data), tt.old, tt.new, 1))
				}
				if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, err := kubeconform(t, dir)
			if err == nil {
				t.Fatalf("kubeconform accepted the mistake:\n%s", out)
			}
			if !strings.Contains(out, tt.wantInOut) {
				t.Fatalf("kubeconform failed, but its output lacks %q:\n%s", tt.wantInOut, out)
			}
		})
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	var k struct {
		Resources []string `yaml:"resources"`
	}
	data, err := os.ReadFile(filepath.Join(manifestDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range manifests(t, manifestDir) {
		files = append(files, filepath.Base(f))
	}
	slices.Sort(files)
	slices.Sort(k.Resources)
	if !slices.Equal(files, k.Resources) {
		t.Fatalf("kustomization.yaml lists %v; the manifests are %v", k.Resources, files)
	}
}

// pod is what the test reads of the Deployment's pod.
type pod struct {
	Containers []struct {
		Name string   `yaml:"name"`
		Args []string `yaml:"args"`
		Env  []struct {
			Name  string `yaml:"name"`
			Value string `yaml:"value"`
		} `yaml:"env"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
	} `yaml:"containers"`
	Volumes []volume `yaml:"volumes"`
}

// volume is a pod's volume from a ConfigMap or a Secret.
type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName string `yaml:"secretName"`
	} `yaml:"secret"`
}

// object reads the one resource of kind and name in the manifests into v.
func object(t *testing.T, kind, name string, v any) {
	t.Helper()
	for _, f := range manifests(t, manifestDir) {
		for _, doc := range documents(t, f) {
			meta, _ := doc["metadata"].(map[string]any)
			if doc["kind"] != kind || meta["name"] != name {
				continue
			}
			b, err := yaml.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(b, v); err != nil {
				t.Fatalf("%s %s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("no %s %s in %s", kind, name, manifestDir)
}

// randomSecret is a token secret of 64 hex digits.
func randomSecret(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// podFiles lays out the pod's mounted ConfigMaps and Secrets in a
// temporary directory, and returns the container's args and a lookupEnv
// for its variables, with every mount path mapped to its directory there
// (in args, variables and the mounted files themselves). fill edits each
// Secret's value before it is written.
func podFiles(t *testing.T, fill func(key, value string) string) (args []string, lookupEnv func(string) (string, bool)) {
	var dep struct {
		Spec struct {
			Template struct {
				Spec pod `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	object(t, "Deployment", "nudged", &dep)
	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("the pod has %d containers, want 1 (nudged)", len(spec.Containers))
	}
	c := spec.Containers[0]
	root := t.TempDir()
	files := make(map[string][]byte) // path in root -> content
	var mounts [][2]string           // mountPath, its directory in root
	for i, m := range c.VolumeMounts {
		dir := filepath.Join(root, strconv.Itoa(i))
		mounts = append(mounts, [2]string{m.MountPath, dir})
		idx := slices.IndexFunc(spec.Volumes, func(v volume) bool { return v.Name == m.Name })
		if idx < 0 {
			t.Fatalf("volumeMount %s: no such volume", m.Name)
		}
		switch v := spec.Volumes[idx]; {
		case v.ConfigMap != nil:
			var cm struct {
				Data map[string]string `yaml:"data"`
			}
			object(t, "ConfigMap", v.ConfigMap.Name, &cm)
			for k, val := range cm.Data {
				files[filepath.Join(dir, k)] = []byte(val)
			}
		case v.Secret != nil:
			var s struct {
				StringData map[string]string `yaml:"stringData"`
			}
			object(t, "Secret", v.Secret.SecretName, &s)
			for k, val := range s.StringData {
				files[filepath.Join(dir, k)] = []byte(fill(k, val))
			}
		default:
			t.Fatalf("volume %s: neither a ConfigMap nor a Secret", m.Name)
		}
	}
	// Longest mount paths first, so that /a/b is mapped before /a.
	slices.SortFunc(mounts, func(a, b [2]string) int { return len(b[0]) - len(a[0]) })
	var oldnew []string
	for _, m := range mounts {
		oldnew = append(oldnew, m[0], m[1])
	}
	local := strings.NewReplacer(oldnew...)
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(local.Replace(string(content))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range c.Args {
		args = append(args, local.Replace(a))
	}
	env := make(map[string]string)
	for _, e := range c.Env {
		env[e.Name] = local.Replace(e.Value)
	}
	return args, func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// The pod's configuration (ConfigMap, Secret, args and variables, with the
// files where the pod mounts them) loads as nudged loads it, once the
// Secret's placeholders are filled in.
func TestKubernetesConfigLoads(t *testing.T) {
	secret := regexp.MustCompile(`secret: ""`)
	args, lookupEnv := podFiles(t, func(key, value string) string {
		if key == "redis-password" {
			return "a-redis-password"
		}
		return secret.ReplaceAllStringFunc(value, func(string) string { return "secret: " + randomSecret(t) })
	})
	loaded, err := daemon.Load(args, lookupEnv, io.Discard)
	if err != nil {
		t.Fatalf("nudged would not start with the Kubernetes configuration: %v", err)
	}
	cfg := loaded.Config
	if cfg.Listen != "0.0.0.0:7070" || cfg.Metrics.Listen != "0.0.0.0:9090" {
		t.Fatalf("listen %s, metrics.listen %s: want 0.0.0.0:7070 and 0.0.0.0:9090, the ports of the Service", cfg.Listen, cfg.Metrics.Listen)
	}
	if len(cfg.Auth.Tokens) == 0 || cfg.Redis.Password != "a-redis-password" {
		t.Fatalf("%d tokens, redis password %q: the Secret's files were not read", len(cfg.Auth.Tokens), cfg.Redis.Password)
	}
}

// The Secret as committed holds placeholders that nudged refuses, so that
// nobody deploys them by mistake.
func TestKubernetesSecretPlaceholdersRefused(t *testing.T) {
	args, lookupEnv := podFiles(t, func(_, value string) string { return value })
	_, err := daemon.Load(args, lookupEnv, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "empty secret") {
		t.Fatalf("nudged accepted the Secret's placeholders, or failed otherwise: %v", err)
	}
}

// The compose service's variables and secret load as nudged loads them.
func TestComposeConfigLoads(t *testing.T) {
	var compose struct {
		Services map[string]struct {
			Environment map[string]string `yaml:"environment"`
			Secrets     []string          `yaml:"secrets"`
		} `yaml:"services"`
		Secrets map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
	}
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatal(err)
	}
	svc, ok := compose.Services["nudged"]
	if !ok {
		t.Fatal("compose.yaml: no service nudged")
	}
	env := make(map[string]string)
	for k, v := range svc.Environment {
		// Compose mounts each secret at /run/secrets/<name>; its file is
		// relative to compose.yaml.
		for _, name := range svc.Secrets {
			if v == "/run/secrets/"+name {
				v = compose.Secrets[name].File
			}
		}
		env[k] = v
	}
	loaded, err := daemon.Load(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	if err != nil {
		t.Fatalf("nudged would not start with compose.yaml's settings: %v", err)
	}
	if cfg := loaded.Config; cfg.Listen != "0.0.0.0:7070" || len(cfg.Auth.Tokens) == 0 || cfg.Redis.Addr == "" {
		t.Fatalf("listen %s, %d tokens, redis.addr %q: want 0.0.0.0:7070, the secret's tokens and the compose Redis", cfg.Listen, len(cfg.Auth.Tokens), cfg.Redis.Addr)
	}
}

// The Dockerfile builds with make static's command (so CI's make static
// builds the image's binaries) and with go.mod's Go.
func TestDockerfileBuildsAsMakeStatic(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dockerfile := read("Dockerfile")
	flags := regexp.MustCompile(`(?m)^STATIC_FLAGS := (.+)$`).FindStringSubmatch(read("mk/deploy.mk"))
	if flags == nil {
		t.Fatal("mk/deploy.mk: no STATIC_FLAGS := line")
	}
	if want := "CGO_ENABLED=0 go build " + flags[1] + " "; !strings.Contains(dockerfile, want) {
		t.Fatalf("the Dockerfile does not build with %q (make static's command)", want)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(read("go.mod"))
	if goVersion == nil {
		t.Fatal("go.mod: no go line")
	}
	if want := "ARG GO_VERSION=" + goVersion[1] + "\n"; !strings.Contains(dockerfile, want) {
		t.Fatalf("the Dockerfile lacks %q: build with go.mod's Go", strings.TrimSpace(want))
	}
}
