package redisstore_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// BenchmarkApplyGroups applies batches of 500 events of users drawn
// uniformly from 100,000 (so about 499 users a batch), one Apply call at a
// time, on a real redis-server, and reports events/s. "per-user" commits
// each user in its own transaction (MaxGroupUsers 1, the path before
// groups); "groups" uses the default MaxGroupUsers.
func BenchmarkApplyGroups(b *testing.B) {
	b.Run("per-user", func(b *testing.B) { benchApplyGroups(b, redisstore.Options{MaxGroupUsers: 1}) })
	b.Run("groups", func(b *testing.B) { benchApplyGroups(b, redisstore.Options{}) })
}

func benchApplyGroups(b *testing.B, opt redisstore.Options) {
	const users, batch = 100_000, 500
	s := benchStore(b, opt)
	step := triggerStep(profile.Limits{})
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := b.Context()
	events := make([]profile.Event, batch)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		for j := range events {
			user := fmt.Sprintf("u-%d", rng.IntN(users))
			events[j] = uev(user, fmt.Sprintf("e-%d-%d", i, j), "view", storeNow)
		}
		b.StartTimer()
		for _, o := range s.Apply(ctx, events, step).Events {
			if o.Err != nil {
				b.Fatal(o.Err)
			}
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
}
