package server

import "crypto/sha256"

// AuthRequired reports whether the server has tokens: without them every
// caller may call every method (the loopback development default).
func (s *Server) AuthRequired() bool { return s.tokens != nil }

// TokenRoles returns the name and roles of the token whose secret is
// secret, ok false when no token has it. The web console signs people in
// with it; their calls are then authorized as every call is.
func (s *Server) TokenRoles(secret string) (name string, roles []string, ok bool) {
	if s.tokens == nil || secret == "" {
		return "", nil, false
	}
	p := s.tokens[secretDigest(sha256.Sum256([]byte(secret)))]
	if p == nil {
		return "", nil, false
	}
	roles = make([]string, len(p.roles))
	for i, r := range p.roles {
		roles[i] = string(r)
	}
	return p.name, roles, true
}
