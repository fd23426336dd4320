package redisstore

import (
	"context"
	"errors"
	"fmt"
)

// ErrEvictionRisk is wrapped by the error of EvictionRisk: Redis runs with a
// maxmemory-policy under which it may evict the limiter's keys.
var ErrEvictionRisk = errors.New("redisstore: redis may evict the limiter's keys")

// checkEviction asks Redis, within the timeout, for its maxmemory and
// maxmemory-policy, and returns an error wrapping ErrEvictionRisk when a
// memory limit is set and the policy is not noeviction: allkeys-* may evict
// any key, volatile-* any key with an expiry, and every key of the limiter
// has one (under volatile-* they are often the first to go). No answer, or
// a refusal (managed Redis often disables CONFIG), is no evidence: nil.
func (l *Limiter) checkEviction() error {
	c := callPool.Get().(*call)
	var cfg map[string]string
	c.fn = func(ctx context.Context) (any, error) {
		var err error
		cfg, err = l.client.ConfigGet(ctx, "maxmemory*").Result()
		return nil, err
	}
	if _, err := l.do(context.Background(), c); err != nil {
		return nil
	}
	return evictionRisk(cfg["maxmemory"], cfg["maxmemory-policy"])
}

// evictionRisk returns the error of checkEviction for the settings read.
func evictionRisk(maxmemory, policy string) error {
	if policy == "" || policy == "noeviction" || maxmemory == "0" || maxmemory == "" {
		return nil
	}
	return fmt.Errorf("%w: maxmemory-policy is %s with maxmemory %s bytes; use noeviction", ErrEvictionRisk, policy, maxmemory)
}
