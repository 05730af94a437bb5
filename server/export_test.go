package server

import (
	"context"

	"github.com/nudge-dm/nudge/profile"
)

// UserEvents and UserOutcome are a fake store's view of a batch: user by
// user, as a store groups it. ApplyByUser answers a Store's Apply with a
// function of that view: fuzz_test.go's memStore and the external tests'
// fakeStore use it.
type UserEvents struct {
	UserID string
	Events []profile.Event
}

type UserOutcome struct {
	profile.Outcome
	Version uint64
	Err     error
}

// ApplyByUser calls apply on the events grouped by user (in the order of
// their first events) and answers per event.
func ApplyByUser(ctx context.Context, events []profile.Event, step profile.Step, apply func(context.Context, []UserEvents, profile.Step) []UserOutcome) profile.BatchOutcome {
	var users []UserEvents
	var index [][]int
	at := map[string]int{}
	for i, e := range events {
		u, ok := at[e.UserID]
		if !ok {
			u = len(users)
			at[e.UserID] = u
			users = append(users, UserEvents{UserID: e.UserID})
			index = append(index, nil)
		}
		users[u].Events = append(users[u].Events, e)
		index[u] = append(index[u], i)
	}
	out := profile.BatchOutcome{Events: make([]profile.EventOutcome, len(events))}
	for u, o := range apply(ctx, users, step) {
		for k, i := range index[u] {
			if o.Err != nil {
				out.Events[i].Err = o.Err
				continue
			}
			out.Events[i] = profile.EventOutcome{Result: o.Results[k], Version: o.Version}
		}
		if o.Err == nil {
			out.Actions = append(out.Actions, o.Actions...)
		}
	}
	return out
}
