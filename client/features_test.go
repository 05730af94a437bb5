package client_test

import (
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// featuresRules define two features.
const featuresRules = `version: 1
features:
  - {name: views_24h, expr: 'profile.count("view", duration("24h"))'}
  - {name: purchases, expr: 'profile.purchase_count()'}
`

// GetFeatures: a row per user in order, the rules version and the
// instant; an unknown feature is INVALID_ARGUMENT.
func TestGetFeatures(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	rules, err := decision.Parse("features.yaml", []byte(featuresRules))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(redisstore.New(rdb, redisstore.Options{}), decision.NewLive(rules, "features.yaml"),
		server.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer()
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })

	c, err := client.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()
	at := time.Now().Add(-time.Minute)
	if _, err := nudgev1.NewIngestServiceClient(c.Conn()).Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		{EventId: "e1", UserId: "u1", Type: "view", OccurredAt: timestamppb.New(at)},
		{EventId: "e2", UserId: "u1", Type: "view", OccurredAt: timestamppb.New(at)},
	}}); err != nil {
		t.Fatal(err)
	}

	before := time.Now()
	f, err := c.GetFeatures(ctx, []string{"u1", "u2"})
	if err != nil {
		t.Fatalf("GetFeatures: %v", err)
	}
	if f.RulesVersion != rules.Version() || f.At.Before(before) || f.At.After(time.Now()) || len(f.Rows) != 2 ||
		!slices.Equal(f.Names, []string{"views_24h", "purchases"}) {
		t.Fatalf("GetFeatures = %+v, want 2 rows of every feature with the rules' version, at the call", f)
	}
	if r := f.Rows[0]; r.GetUserId() != "u1" || !r.GetFound() || r.GetProfileVersion() != 1 || r.GetValues()["views_24h"] != 2 || len(r.GetValues()) != 2 {
		t.Errorf("u1: %v, want found, version 1, 2 views and 0 purchases", r)
	}
	if r := f.Rows[1]; r.GetUserId() != "u2" || r.GetFound() || r.GetValues()["views_24h"] != 0 || len(r.GetValues()) != 2 {
		t.Errorf("u2: %v, want not found, every feature 0", r)
	}

	f, err = c.GetFeatures(ctx, []string{"u1"}, "purchases")
	if err != nil || len(f.Rows[0].GetValues()) != 1 {
		t.Errorf("GetFeatures(purchases) = %v, %v; want the one feature", f.Rows, err)
	}
	if _, err := c.GetFeatures(ctx, []string{"u1"}, "ltv"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an unknown feature: %v, want InvalidArgument", err)
	}
}
