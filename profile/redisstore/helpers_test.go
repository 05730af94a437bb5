package redisstore_test

import (
	"context"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// userEvents are one user's events, as the tests think of them.
type userEvents struct {
	UserID string
	Events []profile.Event
}

// userOutcome is what became of one userEvents of applyUsers.
type userOutcome struct {
	profile.Outcome
	Version uint64
	Err     error
}

// applyUsers applies the users' events in one Apply call (flattened, user
// after user) and gives each entry of users its events' results, its
// actions (those of its events), the version and the error.
func applyUsers(ctx context.Context, s *redisstore.Store, users []userEvents, step profile.Step) []userOutcome {
	var events []profile.Event
	for _, u := range users {
		events = append(events, u.Events...)
	}
	res := s.Apply(ctx, events, step)
	out := make([]userOutcome, len(users))
	i := 0
	for k, u := range users {
		ids := make(map[string]bool)
		for _, e := range u.Events {
			eo := res.Events[i]
			i++
			ids[e.ID] = true
			if eo.Err != nil {
				out[k].Err = eo.Err
				continue
			}
			out[k].Results = append(out[k].Results, eo.Result)
			out[k].Version = eo.Version
		}
		if out[k].Err != nil {
			out[k].Results = nil
			continue
		}
		for _, a := range res.Actions {
			if a.UserID == u.UserID && ids[a.EventID] {
				out[k].Actions = append(out[k].Actions, a)
			}
		}
	}
	return out
}
