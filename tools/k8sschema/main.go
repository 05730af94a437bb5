// Command k8sschema writes the strict, standalone JSON schemas that
// kubeconform checks nudge's Kubernetes manifests against
// (deploy/kubernetes/schemas), one file per kind, from the OpenAPI v2
// definitions that Kubernetes publishes in its own repository
// (api/openapi-spec/swagger.json of the Go module k8s.io/kubernetes).
//
// Why it exists: kubeconform downloads its schemas from GitHub, which
// neither the developers' machines nor CI reach; the Go module proxy does
// serve k8s.io/kubernetes (over 100 MB, so the schemas are generated once
// and committed, not fetched by every run). The conversion does what
// matters of what openapi2jsonschema does for kubeconform's own schemas
// (strict, standalone):
//
//   - strict: every object schema with properties gets
//     "additionalProperties": false, so an unknown or misspelt field fails;
//   - a field of format int-or-string (ports, maxUnavailable) accepts a
//     string or an integer, and a resource.Quantity (cpu: 1, memory: 200Mi)
//     a string or a number, as the API server does;
//   - apiVersion and kind are pinned to the kind's own (an enum);
//   - the definitions a kind reaches are copied into the file's own
//     "definitions" (the swagger's "#/definitions/..." references then
//     resolve inside the file: standalone, nothing else is loaded).
//
// Descriptions and the x-kubernetes-* extensions are dropped to keep the
// files small; they change nothing in validation. Unlike the API server, a
// null optional field is refused (write nothing instead).
//
// Usage, from the tools module (or `make deploy-schemas` at the root):
//
//	go run ./k8sschema -kubernetes v1.37.2 -out ../deploy/kubernetes/schemas \
//	    v1/ConfigMap apps/v1/Deployment ...
//
// Each argument is apiVersion/Kind. -kubernetes names the version of the
// module k8s.io/kubernetes to read swagger.json from: the command runs
// `go mod download` into a temporary module cache that it removes
// afterwards. -swagger FILE reads a swagger.json already on disk instead.
// The output is deterministic: the same inputs write the same bytes.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("k8sschema: ")
	version := flag.String("kubernetes", "v1.37.2", "version of the Go module k8s.io/kubernetes whose api/openapi-spec/swagger.json is read")
	swagger := flag.String("swagger", "", "read this swagger.json instead of downloading k8s.io/kubernetes")
	out := flag.String("out", "", "directory to write the schemas to (required)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: k8sschema [-kubernetes VERSION | -swagger FILE] -out DIR apiVersion/Kind...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*version, *swagger, *out, flag.Args()); err != nil {
		log.Fatal(err)
	}
}

func run(version, swaggerFile, out string, kinds []string) error {
	source := "k8s.io/kubernetes@" + version + " api/openapi-spec/swagger.json"
	if swaggerFile != "" {
		source = filepath.Base(swaggerFile)
	} else {
		dir, cleanup, err := downloadKubernetes(version)
		if err != nil {
			return err
		}
		defer cleanup()
		swaggerFile = filepath.Join(dir, "api", "openapi-spec", "swagger.json")
	}
	data, err := os.ReadFile(swaggerFile)
	if err != nil {
		return err
	}
	var spec struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("%s: %w", swaggerFile, err)
	}
	if len(spec.Definitions) == 0 {
		return fmt.Errorf("%s: no definitions", swaggerFile)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, k := range kinds {
		gvk, err := parseKind(k)
		if err != nil {
			return err
		}
		schema, err := kindSchema(spec.Definitions, gvk, source)
		if err != nil {
			return err
		}
		b, err := json.MarshalIndent(schema, "", "  ")
		if err != nil {
			return err
		}
		name := filepath.Join(out, gvk.fileName())
		if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Printf("%s (%d bytes)\n", name, len(b)+1)
	}
	return nil
}

// downloadKubernetes fetches the module k8s.io/kubernetes@version through
// the configured module proxy into a temporary module cache, and returns
// its directory and a function that removes the cache.
func downloadKubernetes(version string) (dir string, cleanup func(), err error) {
	tmp, err := os.MkdirTemp("", "k8sschema-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(tmp) }
	cmd := exec.Command("go", "mod", "download", "-json", "k8s.io/kubernetes@"+version)
	// Outside any module, so nothing is added to a go.mod or go.sum; a
	// writable cache, so it can be removed.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOMODCACHE="+filepath.Join(tmp, "mod"), "GOFLAGS=-modcacherw")
	cmd.Stderr = os.Stderr
	outb, err := cmd.Output()
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %w", version, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(outb, &m); err != nil || m.Error != "" || m.Dir == "" {
		cleanup()
		return "", nil, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %s %v", version, m.Error, err)
	}
	return m.Dir, cleanup, nil
}

// groupVersionKind names a kind as a manifest does (apiVersion, kind).
type groupVersionKind struct {
	group, version, kind string
}

// parseKind reads "v1/Service" or "apps/v1/Deployment".
func parseKind(s string) (groupVersionKind, error) {
	parts := strings.Split(s, "/")
	switch {
	case len(parts) == 2 && parts[0] != "" && parts[1] != "":
		return groupVersionKind{version: parts[0], kind: parts[1]}, nil
	case len(parts) == 3 && parts[0] != "" && parts[1] != "" && parts[2] != "":
		return groupVersionKind{group: parts[0], version: parts[1], kind: parts[2]}, nil
	}
	return groupVersionKind{}, fmt.Errorf("%q: want apiVersion/Kind, as v1/Service or apps/v1/Deployment", s)
}

func (g groupVersionKind) apiVersion() string {
	if g.group == "" {
		return g.version
	}
	return g.group + "/" + g.version
}

// fileName is where kubeconform's schema location template
// "{{ .ResourceKind }}{{ .KindSuffix }}.json" looks: the kind in lower
// case, then "-" and the first label of the group, then "-" and the
// version (deployment-apps-v1.json, service-v1.json).
func (g groupVersionKind) fileName() string {
	name := strings.ToLower(g.kind)
	if g.group != "" {
		name += "-" + strings.ToLower(strings.Split(g.group, ".")[0])
	}
	return name + "-" + strings.ToLower(g.version) + ".json"
}

const refPrefix = "#/definitions/"

// The definition of resource.Quantity, which the API server accepts as a
// string or a number although the swagger says string.
const quantityName = "io.k8s.apimachinery.pkg.api.resource.Quantity"

// kindSchema is the standalone, strict schema of one kind: its definition
// converted, with the converted definitions it reaches under
// "definitions".
func kindSchema(defs map[string]map[string]any, gvk groupVersionKind, source string) (map[string]any, error) {
	rootName, err := findKind(defs, gvk)
	if err != nil {
		return nil, err
	}
	refs := make(map[string]bool)
	root, ok := convert(defs[rootName], refs).(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: not an object schema", rootName)
	}
	props, _ := root["properties"].(map[string]any)
	if props == nil {
		return nil, fmt.Errorf("%s: no properties", rootName)
	}
	props["apiVersion"] = map[string]any{"type": "string", "enum": []any{gvk.apiVersion()}}
	props["kind"] = map[string]any{"type": "string", "enum": []any{gvk.kind}}

	// Copy every definition reachable from the root, converting each once.
	out := make(map[string]any)
	for pending := sortedKeys(refs); len(pending) > 0; pending = pending[1:] {
		name := pending[0]
		if _, done := out[name]; done {
			continue
		}
		def, ok := defs[name]
		if !ok {
			return nil, fmt.Errorf("%s: reference to a missing definition %s", rootName, name)
		}
		more := make(map[string]bool)
		out[name] = convert(def, more)
		for _, m := range sortedKeys(more) {
			if _, done := out[m]; !done {
				pending = append(pending, m)
			}
		}
	}
	if q, ok := out[quantityName]; ok {
		if m, _ := q.(map[string]any); m["type"] != "string" {
			return nil, fmt.Errorf("%s is no longer a string in the swagger: check the conversion", quantityName)
		}
		out[quantityName] = map[string]any{"oneOf": []any{
			map[string]any{"type": "string"}, map[string]any{"type": "number"},
		}}
	}
	root["$schema"] = "http://json-schema.org/draft-04/schema#"
	root["description"] = fmt.Sprintf("%s %s, strict. Generated by tools/k8sschema from %s: do not edit.", gvk.apiVersion(), gvk.kind, source)
	if len(out) > 0 {
		root["definitions"] = out
	}
	return root, nil
}

// findKind returns the name of the definition marked with gvk in its
// x-kubernetes-group-version-kind.
func findKind(defs map[string]map[string]any, gvk groupVersionKind) (string, error) {
	var found []string
	for name, def := range defs {
		list, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, item := range list {
			m, _ := item.(map[string]any)
			if m["group"] == gvk.group && m["version"] == gvk.version && m["kind"] == gvk.kind {
				found = append(found, name)
			}
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%s %s: no such kind in the swagger", gvk.apiVersion(), gvk.kind)
	case 1:
		return found[0], nil
	}
	sort.Strings(found)
	return "", fmt.Errorf("%s %s: several definitions claim it: %s", gvk.apiVersion(), gvk.kind, strings.Join(found, ", "))
}

// convert returns a copy of the OpenAPI v2 schema v as the strict JSON
// schema kubeconform checks with, adding the names of the definitions it
// refers to to refs.
func convert(v any, refs map[string]bool) any {
	switch v := v.(type) {
	case map[string]any:
		if v["format"] == "int-or-string" {
			return map[string]any{"oneOf": []any{
				map[string]any{"type": "string"}, map[string]any{"type": "integer"},
			}}
		}
		out := make(map[string]any, len(v))
		for k, val := range v {
			switch {
			case k == "description" || strings.HasPrefix(k, "x-"):
				continue
			case k == "$ref":
				s, _ := val.(string)
				if name, ok := strings.CutPrefix(s, refPrefix); ok {
					refs[name] = true
				}
				out[k] = val
			case k == "properties":
				props, _ := val.(map[string]any)
				conv := make(map[string]any, len(props))
				for name, p := range props {
					conv[name] = convert(p, refs)
				}
				out[k] = conv
			case k == "items" || k == "additionalProperties":
				out[k] = convert(val, refs)
			default:
				out[k] = val
			}
		}
		if _, ok := out["properties"]; ok {
			if _, set := out["additionalProperties"]; !set {
				out["additionalProperties"] = false
			}
		}
		// A $ref's siblings are ignored by draft-04 validators; keep the
		// reference alone so that the file says what is checked.
		if ref, ok := out["$ref"]; ok {
			return map[string]any{"$ref": ref}
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = convert(x, refs)
		}
		return out
	}
	return v
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
