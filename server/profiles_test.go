package server_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// counts is one (type, category) group of GetProfile's counts, over the
// 5m, 30m, 1h, 24h, 7d, 30d and 90d windows in that order; the tests'
// events are all within the day, so the longer windows count as 24h.
func counts(typ, category string, n5m, n30m, n1h, n24h uint64) []*nudgev1.WindowedCount {
	const day = 24 * time.Hour
	var out []*nudgev1.WindowedCount
	for i, w := range []time.Duration{5 * time.Minute, 30 * time.Minute, time.Hour, day, 7 * day, 30 * day, 90 * day} {
		out = append(out, &nudgev1.WindowedCount{Type: typ, Category: category, Window: durationpb.New(w),
			Count: []uint64{n5m, n30m, n1h, n24h, n24h, n24h, n24h}[i]})
	}
	return out
}

func TestProfiles(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	ctx := callCtx(t)

	tz := ev("p2", "u1", "view", "phones", now.Add(-5*time.Minute)) // fires viewed-twice
	tz.Attributes = map[string]string{"tz": "Europe/Paris", "ignored": "x"}
	buy := ev("p4", "u1", "purchase", "", now.Add(-3*time.Minute))
	buy.Value = 10.5
	noEmail := ev("p5", "u1", "unsubscribe", "", now.Add(-2*time.Minute))
	noEmail.Channel = "email"
	optOut := ev("q1", "u2", "unsubscribe", "", now.Add(-10*time.Minute)) // every channel
	smsBack := ev("q2", "u2", "subscribe", "", now.Add(-5*time.Minute))
	smsBack.Channel = "sms"
	publish(t, h,
		ev("p1", "u1", "view", "phones", now.Add(-10*time.Minute)),
		tz,
		ev("p3", "u1", "view", "", now.Add(-4*time.Minute)),
		buy,
		noEmail,
		optOut,
		smsBack,
	)

	t.Run("GetProfile", func(t *testing.T) {
		got, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
		if err != nil {
			t.Fatalf("GetProfile: %v", err)
		}
		var want []*nudgev1.WindowedCount
		// Per (type, category) with a category, then per type over all
		// categories, types sorted.
		want = append(want, counts("view", "phones", 1, 2, 2, 2)...)
		want = append(want, counts("purchase", "", 1, 1, 1, 1)...)
		want = append(want, counts("unsubscribe", "", 1, 1, 1, 1)...)
		want = append(want, counts("view", "", 2, 3, 3, 3)...)
		checkProto(t, got, &nudgev1.GetProfileResponse{Profile: &nudgev1.Profile{
			UserId:    "u1",
			Version:   1,
			UpdatedAt: timestamppb.New(now),
			Counts:    want,
			LastSeen: map[string]*timestamppb.Timestamp{
				"view":        timestamppb.New(now.Add(-4 * time.Minute)),
				"purchase":    timestamppb.New(now.Add(-3 * time.Minute)),
				"unsubscribe": timestamppb.New(now.Add(-2 * time.Minute)),
			},
			Totals:             map[string]uint64{"view": 3, "purchase": 1, "unsubscribe": 1},
			PurchaseCount:      1,
			PurchaseValue:      10.5,
			Consent:            map[string]bool{"email": false},
			Attributes:         map[string]string{"tz": "Europe/Paris"},
			RememberedEventIds: 5,
			// viewed-twice fired at p2; the purchase after it converts.
			Exposures: []*nudgev1.CampaignExposure{
				{CampaignId: "viewed-twice", Variant: "treated", ExposedAt: timestamppb.New(now.Add(-5 * time.Minute)), Converted: true},
			},
		}})
	})

	t.Run("GetProfile consent", func(t *testing.T) {
		got, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u2"})
		if err != nil {
			t.Fatalf("GetProfile: %v", err)
		}
		p := got.GetProfile()
		if !p.GetGlobalOptOut() || len(p.GetConsent()) != 1 || !p.GetConsent()["sms"] {
			t.Fatalf("global_opt_out = %v, consent = %v; want true, {sms: true}", p.GetGlobalOptOut(), p.GetConsent())
		}
	})

	t.Run("GetProfile unknown user", func(t *testing.T) {
		_, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "nobody"})
		wantCode(t, err, codes.NotFound, "not found")
	})

	t.Run("DeleteProfile", func(t *testing.T) {
		got, err := h.profiles.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: "u1"})
		if err != nil {
			t.Fatalf("DeleteProfile: %v", err)
		}
		checkProto(t, got, &nudgev1.DeleteProfileResponse{Deleted: true, ActionsDeleted: 1})

		got, err = h.profiles.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: "u1"})
		if err != nil {
			t.Fatalf("DeleteProfile again: %v", err)
		}
		checkProto(t, got, &nudgev1.DeleteProfileResponse{})

		_, err = h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
		wantCode(t, err, codes.NotFound, "not found")
		if _, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u2"}); err != nil {
			t.Fatalf("deleting u1 affected u2: %v", err)
		}
	})
}

func TestProfilesInvalid(t *testing.T) {
	h := start(t, &fakeStore{}, server.Config{})
	tests := []struct {
		name, id, msg string
	}{
		{"empty", "", "user_id: value is required"},
		{"space", "u 1", "user_id: does not match regex pattern"},
		{"129 bytes", strings.Repeat("u", 129), "user_id: must be at most 128 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.profiles.GetProfile(callCtx(t), &nudgev1.GetProfileRequest{UserId: tt.id})
			wantCode(t, err, codes.InvalidArgument, tt.msg)
			_, err = h.profiles.DeleteProfile(callCtx(t), &nudgev1.DeleteProfileRequest{UserId: tt.id})
			wantCode(t, err, codes.InvalidArgument, tt.msg)
		})
	}
}

func TestProfilesStoreFailure(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code codes.Code
	}{
		{"unavailable", fmt.Errorf("%w: connection refused", profile.ErrUnavailable), codes.Unavailable},
		{"corrupt", fmt.Errorf("%w: unknown encoding version 9", profile.ErrCorrupt), codes.DataLoss},
		{"canceled", fmt.Errorf("get: %w", context.Canceled), codes.Canceled},
		{"unknown", errors.New("disk on fire"), codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, &fakeStore{
				get: func(context.Context, string) (*profile.Profile, error) { return nil, tt.err },
				del: func(context.Context, string) (profile.DeleteResult, error) {
					return profile.DeleteResult{}, tt.err
				},
			}, server.Config{})
			_, err := h.profiles.GetProfile(callCtx(t), &nudgev1.GetProfileRequest{UserId: "u1"})
			wantCode(t, err, tt.code, tt.err.Error())
			_, err = h.profiles.DeleteProfile(callCtx(t), &nudgev1.DeleteProfileRequest{UserId: "u1"})
			wantCode(t, err, tt.code, tt.err.Error())
		})
	}
}
