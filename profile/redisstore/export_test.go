package redisstore

// Queued reports how many parts (one call's events of one user) wait on
// userID's shard, for tests that must know a call is queued before they let
// the shard go on.
func (s *Store) Queued(userID string) int {
	sh := &s.shards[s.keys.Bucket(userID)%len(s.shards)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := 0
	for _, w := range sh.order {
		n += len(w.parts)
	}
	return n
}
