package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// GetRules describes the rules in force and, when the file on disk was
// refused, that file.
func (s *Server) GetRules(context.Context, *nudgev1.GetRulesRequest) (*nudgev1.GetRulesResponse, error) {
	r := s.rules.Rules()
	triggers, offers := r.Counts()
	resp := &nudgev1.GetRulesResponse{
		Version:  r.Version(),
		LoadedAt: timestamppb.New(s.rules.LoadedAt()),
		Source:   s.rules.Source(),
		Triggers: uint32(triggers),
		Offers:   uint32(offers),
	}
	if ref, ok := s.rules.Refused(); ok {
		resp.Refusal = &nudgev1.RulesRefusal{At: timestamppb.New(ref.At), Version: ref.Version}
		if ref.Err != nil { // another RuleSource may leave it nil
			resp.Refusal.Error = ref.Err.Error()
		}
	}
	return resp, nil
}
