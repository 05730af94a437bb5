package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/parquet-go/parquet-go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

const (
	scorerSecret = "scorer-secret-0123456789"
	// featuresTestRules: views, purchases, and a feature that fails on a
	// user without purchases (1/0 is not a finite number).
	featuresTestRules = `version: 1
features:
  - {name: views_24h, expr: 'profile.count("view", duration("24h"))'}
  - {name: purchases, expr: 'profile.purchase_count()'}
  - {name: per_purchase, expr: 'double(profile.count("view", duration("24h"))) / double(profile.purchase_count())'}
`
)

// featuresServer serves rules on miniredis with a features token and an
// admin one, users u0..u(n-1) having i%5+1 views each and u0 a purchase.
func featuresServer(t *testing.T, rulesYAML string, n int) string {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	rules, err := decision.Parse("features.yaml", []byte(rulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(redisstore.New(rdb, redisstore.Options{Buckets: 8}), decision.NewLive(rules, "features.yaml"), server.Config{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Tokens: []server.Token{
			{Name: "scorer", Secret: scorerSecret, Roles: []server.Role{server.RoleFeatures}},
			{Name: "ops", Secret: opsSecret, Roles: []server.Role{server.RoleAdmin, server.RoleIngest}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	var events []*nudgev1.Event
	at := timestamppb.New(time.Now().Add(-time.Hour))
	for i := range n {
		for k := range i%5 + 1 {
			events = append(events, &nudgev1.Event{EventId: fmt.Sprintf("v%d-%d", i, k), UserId: fmt.Sprintf("u%d", i), Type: "view", OccurredAt: at})
		}
	}
	events = append(events, &nudgev1.Event{EventId: "b0", UserId: "u0", Type: "purchase", Value: 5, OccurredAt: at})
	cl := dialT(t, addr, opsSecret)
	for batch := range slices.Chunk(events, 5000) {
		if _, err := nudgev1.NewIngestServiceClient(cl).Publish(t.Context(), &nudgev1.PublishRequest{Events: batch}); err != nil {
			t.Fatal(err)
		}
	}
	return addr
}

func TestFeaturesGet(t *testing.T) {
	addr := featuresServer(t, featuresTestRules, 4)
	tests := []struct {
		name       string
		secret     string
		args       []string
		wantStatus int
		wantOut    []string
		wantErr    string
	}{
		{"a table", scorerSecret, []string{"u3", "nobody", "u0"}, 0, []string{
			"USER    FOUND  views_24h  purchases  per_purchase\n" +
				"u3      yes    4          0          error\n" +
				"nobody  no     0          0          error\n" +
				"u0      yes    1          1          1\n",
			"errors:\n  u3 per_purchase: features.per_purchase:",
			"\nrules ",
		}, ""},
		{"some features", scorerSecret, []string{"u3", "--features", "purchases,views_24h"}, 0, []string{
			"USER  FOUND  purchases  views_24h\nu3    yes    0          4\n",
		}, ""},
		{"json", opsSecret, []string{"u3", "--features", "views_24h", "--json"}, 0, []string{
			`"rows":[{"userId":"u3","found":true,"values":{"views_24h":4},"profileVersion":"1"}]`, `"features":["views_24h"]`,
		}, ""},
		{"an unknown feature", scorerSecret, []string{"u3", "--features", "ltv"}, 1, nil,
			`nudgectl features get: InvalidArgument: invalid request: decision: unknown feature: "ltv" (the rules define views_24h, purchases, per_purchase)`},
		{"no user", scorerSecret, nil, 2, nil, "requires at least 1 arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out, errOut := ctl(t, tt.secret, append([]string{"features", "get", "--addr", addr}, tt.args...)...)
			if status != tt.wantStatus || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("status %d, want %d; stderr %q, want %q", status, tt.wantStatus, errOut, tt.wantErr)
			}
			if slices.Contains(tt.args, "--json") {
				out = strings.ReplaceAll(out, " ", "") // protojson spaces its output at random
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// exportedRow is a row of the parquet export, read back by name.
type exportedRow struct {
	UserID         string   `parquet:"user_id"`
	Found          bool     `parquet:"found"`
	ProfileVersion int64    `parquet:"profile_version"`
	Errors         *string  `parquet:"errors,optional"`
	Views24h       *float64 `parquet:"views_24h,optional"`
	Purchases      *float64 `parquet:"purchases,optional"`
	PerPurchase    *float64 `parquet:"per_purchase,optional"`
}

func TestFeaturesExport(t *testing.T) {
	const users = 1200
	addr := featuresServer(t, featuresTestRules, users)
	dir := t.TempDir()

	t.Run("jsonl to stdout", func(t *testing.T) {
		status, out, errOut := ctl(t, scorerSecret, "features", "export", "--addr", addr, "--features", "views_24h,per_purchase")
		if status != 0 {
			t.Fatalf("status %d: %s", status, errOut)
		}
		if !strings.Contains(errOut, fmt.Sprintf("%d rows (%d with errors)", users, users-1)) || !strings.Contains(errOut, "to standard output; rules ") {
			t.Errorf("summary: %s", errOut)
		}
		seen := map[string]bool{}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var r struct {
				UserID         string             `json:"user_id"`
				Found          bool               `json:"found"`
				ProfileVersion uint64             `json:"profile_version"`
				Features       map[string]float64 `json:"features"`
				Errors         map[string]string  `json:"errors"`
			}
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			var i int
			fmt.Sscanf(r.UserID, "u%d", &i)
			if seen[r.UserID] || !r.Found || r.ProfileVersion != 1 || r.Features["views_24h"] != float64(i%5+1) {
				t.Fatalf("row %s", sc.Text())
			}
			if _, ok := r.Errors["per_purchase"]; ok == (i == 0) {
				t.Fatalf("row %s: per_purchase fails for every user but u0", sc.Text())
			}
			seen[r.UserID] = true
		}
		if len(seen) != users {
			t.Errorf("%d users, want %d", len(seen), users)
		}
	})

	t.Run("parquet", func(t *testing.T) {
		path := filepath.Join(dir, "f.parquet")
		status, _, errOut := ctl(t, opsSecret, "features", "export", "--addr", addr, "--format", "parquet", "-o", path, "--quiet")
		if status != 0 || !strings.Contains(errOut, "rows (") || !strings.Contains(errOut, "to "+path) {
			t.Fatalf("status %d: %s", status, errOut)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		pf, err := parquet.OpenFile(f, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		at, _ := pf.Lookup("at")
		version, _ := pf.Lookup("rules_version")
		names, _ := pf.Lookup("features")
		if _, err := time.Parse(time.RFC3339Nano, at); err != nil || version == "" || names != "views_24h,purchases,per_purchase" {
			t.Errorf("metadata at=%q rules_version=%q features=%q", at, version, names)
		}
		var cols []string
		for _, c := range pf.Schema().Columns() {
			cols = append(cols, strings.Join(c, "."))
		}
		if want := []string{"errors", "found", "per_purchase", "profile_version", "purchases", "user_id", "views_24h"}; !slices.Equal(cols, want) {
			t.Errorf("columns %v, want %v", cols, want)
		}
		rows, err := parquet.Read[exportedRow](f, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != users {
			t.Fatalf("%d rows, want %d", len(rows), users)
		}
		for _, r := range rows {
			var i int
			fmt.Sscanf(r.UserID, "u%d", &i)
			ok := r.Found && r.ProfileVersion == 1 && r.Views24h != nil && *r.Views24h == float64(i%5+1) && r.Purchases != nil
			if i == 0 {
				ok = ok && r.PerPurchase != nil && *r.PerPurchase == 1 && r.Errors == nil
			} else {
				ok = ok && r.PerPurchase == nil && r.Errors != nil && strings.Contains(*r.Errors, `"per_purchase":"features.per_purchase:`)
			}
			if !ok {
				t.Fatalf("row %+v", r)
			}
		}
	})

	t.Run("failures", func(t *testing.T) {
		path := filepath.Join(dir, "none.jsonl")
		for _, tt := range []struct {
			name       string
			secret     string
			args       []string
			wantStatus int
			wantErr    string
		}{
			{"an unknown format", scorerSecret, []string{"--format", "csv"}, 2, `--format "csv": want jsonl or parquet`},
			{"an unknown feature", scorerSecret, []string{"--features", "ltv", "-o", path}, 1, `InvalidArgument: invalid request: decision: unknown feature: "ltv"`},
			{"no role", "not-a-token-0123456789", []string{"-o", path}, 1, "Unauthenticated"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				status, _, errOut := ctl(t, tt.secret, append([]string{"features", "export", "--addr", addr}, tt.args...)...)
				if status != tt.wantStatus || !strings.Contains(errOut, tt.wantErr) {
					t.Fatalf("status %d, want %d; stderr %q, want %q", status, tt.wantStatus, errOut, tt.wantErr)
				}
			})
		}
		if left, _ := filepath.Glob(filepath.Join(dir, "*none*")); len(left) != 0 {
			t.Errorf("a failed export left %v", left)
		}
	})
}

// A feature with the name of a fixed column cannot be a parquet column:
// the export says so; jsonl has no such limit.
func TestFeaturesExportColumnClash(t *testing.T) {
	addr := featuresServer(t, "version: 1\nfeatures:\n  - {name: found, expr: '1'}\n", 2)
	status, _, errOut := ctl(t, scorerSecret, "features", "export", "--addr", addr, "--format", "parquet", "-o", filepath.Join(t.TempDir(), "f.parquet"))
	if status != 1 || !strings.Contains(errOut, `feature "found" has the name of a column of the export`) {
		t.Errorf("status %d, stderr %q", status, errOut)
	}
	if status, out, errOut := ctl(t, scorerSecret, "features", "export", "--addr", addr); status != 0 || strings.Count(out, `"features":{"found":1}`) != 2 {
		t.Errorf("jsonl: status %d, stdout %q, stderr %q", status, out, errOut)
	}
}

// dialT connects to a test server with a token, until the test ends.
func dialT(t *testing.T, addr, secret string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(insecureBearer(secret)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// insecureBearer sends a bearer token over plaintext (a loopback test server).
type insecureBearer string

func (b insecureBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (insecureBearer) RequireTransportSecurity() bool { return false }
