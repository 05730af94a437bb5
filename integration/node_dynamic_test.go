package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// nodeDynamicDir is examples/node-dynamic, from this package's directory.
const nodeDynamicDir = "../examples/node-dynamic"

// The Node client that loads proto/ (and buf/validate/validate.proto from
// third_party/protovalidate) at run time with @grpc/proto-loader, against
// a real nudged on the embedded store: its event is applied, the web
// decision is made on the profile holding it, and the profile reads back.
func TestNodeDynamicClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := nodeExample(ctx, t, nodeDynamicDir)

	n := startNudged(t, buildNudged(t))
	user := "node-dyn-" + strings.ReplaceAll(t.Name(), "/", "-")
	out := runIn(t, ctx, dir, []string{"NUDGE_ADDR=" + n.addr, "NUDGE_USER=" + user}, "node", "client.js")
	t.Logf("client output:\n%s", out)

	// The client prints proto field names (keepCase), enums as names and
	// 64-bit integers as decimal strings.
	type line struct {
		RPC            string            `json:"rpc"`
		UserID         string            `json:"user_id"`
		Status         string            `json:"status"`
		ProfileVersion string            `json:"profile_version"`
		Verdict        string            `json:"verdict"`
		OfferID        string            `json:"offer_id"`
		Payload        map[string]string `json:"payload"`
		Degraded       bool              `json:"degraded"`
		Version        string            `json:"version"`
		Totals         map[string]string `json:"totals"`
		LastSeen       map[string]string `json:"last_seen"`
	}
	got := map[string]line{}
	for _, s := range strings.Split(strings.TrimSpace(out), "\n") {
		var l line
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("client printed a line that is not JSON: %q: %v", s, err)
		}
		if l.UserID != user {
			t.Errorf("line for user %q, want %q: %s", l.UserID, user, s)
		}
		got[l.RPC] = l
	}
	if p := got["Publish"]; p.Status != "EVENT_STATUS_APPLIED" || p.ProfileVersion != "1" {
		t.Errorf("Publish = %+v, want EVENT_STATUS_APPLIED at profile version 1", p)
	}
	// web-welcome's payload says whether the profile has a view: "true"
	// shows the decision read the profile the event was applied to.
	if d := got["GetDecision"]; d.Verdict != "VERDICT_SEND" || d.OfferID != "web-welcome" || d.Payload["returning"] != "true" || d.Degraded || d.ProfileVersion != "1" {
		t.Errorf("GetDecision = %+v, want VERDICT_SEND web-welcome (returning true), not degraded, on profile version 1", d)
	}
	if p := got["GetProfile"]; p.Version != "1" || p.Totals["view"] != "1" || p.LastSeen["view"] == "" {
		t.Errorf("GetProfile = %+v, want version 1 with one view", p)
	}

	// Unreachable nudged: a non-zero exit naming the gRPC code.
	cmd := exec.CommandContext(ctx, "node", "client.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NUDGE_ADDR=127.0.0.1:1", "NUDGE_TIMEOUT_MS=2000")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "UNAVAILABLE") {
		t.Errorf("client against a closed port: err %v, output %q; want a non-zero exit naming UNAVAILABLE", err, b)
	}
}

// `make descriptors` writes an image that tools taking a descriptor set
// (grpcurl -protoset, buf curl --schema, Kreya) can load on its own: every
// import is in it, so protodesc resolves it without the Go registry, and
// it keeps the comments. It needs buf, as the make target does; a missing
// buf fails with the install command (mk/generate.mk's message).
func TestDescriptorSet(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "nudge.binpb")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// mk/generate.mk alone, not the root Makefile: only this target runs.
	runIn(t, ctx, root, nil, "make", "-s", "-f", "mk/generate.mk", "descriptors", "DESCRIPTORS="+out)

	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(b, &set); err != nil {
		t.Fatalf("%s is not a FileDescriptorSet: %v", out, err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatalf("protodesc.NewFiles: %v (an import missing from the image?)", err)
	}
	for _, name := range []string{"buf/validate/validate.proto", "google/protobuf/timestamp.proto", "nudge/v1/decision.proto"} {
		if _, err := files.FindFileByPath(name); err != nil {
			t.Errorf("the image has no %s: %v", name, err)
		}
	}
	for _, tc := range []struct{ service, method string }{
		{"nudge.v1.DecisionService", "GetDecision"},
		{"nudge.v1.IngestService", "Publish"},
		{"nudge.v1.ProfileService", "GetProfile"},
		{"nudge.v1.ActionService", ""},
		{"nudge.v1.AdminService", ""},
	} {
		t.Run(tc.service, func(t *testing.T) {
			d, err := files.FindDescriptorByName(protoreflect.FullName(tc.service))
			if err != nil {
				t.Fatalf("the image has no %s: %v", tc.service, err)
			}
			sd, ok := d.(protoreflect.ServiceDescriptor)
			if !ok {
				t.Fatalf("%s is a %T, not a service", tc.service, d)
			}
			if tc.method != "" && sd.Methods().ByName(protoreflect.Name(tc.method)) == nil {
				t.Errorf("%s has no method %s", tc.service, tc.method)
			}
			// Source info: the service's leading comment from the .proto.
			if c := sd.ParentFile().SourceLocations().ByDescriptor(sd).LeadingComments; strings.TrimSpace(c) == "" {
				t.Errorf("%s has no leading comment: the image lacks source info", tc.service)
			}
		})
	}
}
