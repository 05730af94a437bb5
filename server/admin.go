package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// GetRules describes the rules in force.
func (s *Server) GetRules(context.Context, *nudgev1.GetRulesRequest) (*nudgev1.GetRulesResponse, error) {
	r := s.rules.Rules()
	triggers, offers := r.Counts()
	return &nudgev1.GetRulesResponse{
		Version:  r.Version(),
		LoadedAt: timestamppb.New(s.rules.LoadedAt()),
		Source:   s.rules.Source(),
		Triggers: uint32(triggers),
		Offers:   uint32(offers),
	}, nil
}
