package redisstore

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// The benchmarks share one redis-server, stopped by TestMain, so that this
// store and redis_rate (GCRA) are measured against the same server.
var shared struct {
	once sync.Once
	srv  *redisServer
}

// benchClient returns a client on go-redis's default options, as a user
// starts with; REDISSTORE_BENCH_CONTEXT_TIMEOUT=1 sets ContextTimeoutEnabled,
// under which the store uses the client as it is rather than a WithTimeout
// clone.
func benchClient(b *testing.B) *redis.Client {
	b.Helper()
	shared.once.Do(func() {
		shared.srv = newRedisServer(b)
		shared.srv.Start()
	})
	if shared.srv == nil {
		b.Skip("no redis-server")
	}
	c := redis.NewClient(&redis.Options{Addr: shared.srv.Addr(), DisableIdentity: true, ContextTimeoutEnabled: os.Getenv("REDISSTORE_BENCH_CONTEXT_TIMEOUT") == "1"})
	b.Cleanup(func() { _ = c.Close() })
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		b.Fatal(err)
	}
	return c
}

// reportServerTime resets the server's command statistics now and, when b
// ends, reports the server's own time per script run (EVALSHA), which the
// network and the client do not blur.
func reportServerTime(b *testing.B, c *redis.Client) {
	b.Helper()
	ctx := context.Background()
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return
		}
		for line := range strings.SplitSeq(info, "\n") {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
				for field := range strings.SplitSeq(rest, ",") {
					if v, ok := strings.CutPrefix(field, "usec_per_call="); ok {
						if f, err := strconv.ParseFloat(v, 64); err == nil {
							b.ReportMetric(f*1000, "server-ns/op")
						}
					}
				}
			}
		}
	})
}

// warm runs f untimed, so that the server, the connection and the caches
// are warm before b measures.
func warm(b *testing.B, f func() error) {
	b.Helper()
	for range 2000 {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
}

func stopShared() {
	if shared.srv != nil {
		shared.srv.Stop()
	}
}

// BenchmarkAllow measures one admission decision of this store: "admit" far
// from the limit (a rule loose enough that every call passes; the log holds
// the last 100ms of calls), "refuse" at a spent 100 per minute quota.
func BenchmarkAllow(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	b.Run("admit", func(b *testing.B) {
		l, err := New(c, "bench-admit", 1<<30, 100*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		warm(b, func() error { _, err := l.Allow(ctx); return err })
		reportServerTime(b, c)
		for b.Loop() {
			if ok, err := l.Allow(ctx); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("refuse", func(b *testing.B) {
		l, err := New(c, "bench-refuse", 100, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		warm(b, func() error { _, err := l.Allow(ctx); return err })
		reportServerTime(b, c)
		for b.Loop() {
			if ok, err := l.Allow(ctx); ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("admit-parallel", func(b *testing.B) {
		l, err := New(c, "bench-parallel", 1<<30, 100*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		warm(b, func() error { _, err := l.Allow(ctx); return err })
		reportServerTime(b, c)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if ok, err := l.Allow(ctx); !ok || err != nil {
					b.Error(ok, err)
					return
				}
			}
		})
	})
}

// BenchmarkRedisRate measures the same decisions with
// github.com/go-redis/redis_rate (GCRA, not a sliding window) for comparison.
func BenchmarkRedisRate(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	rl := redis_rate.NewLimiter(c)
	b.Run("admit", func(b *testing.B) {
		warm(b, func() error { _, err := rl.Allow(ctx, "bench-admit", redis_rate.PerMinute(1<<30)); return err })
		reportServerTime(b, c)
		for b.Loop() {
			res, err := rl.Allow(ctx, "bench-admit", redis_rate.PerMinute(1<<30))
			if err != nil || res.Allowed != 1 {
				b.Fatal(res, err)
			}
		}
	})
	b.Run("refuse", func(b *testing.B) {
		// GCRA refills one call per Period/Rate: an hour keeps it refusing.
		limit := redis_rate.PerHour(100)
		warm(b, func() error { _, err := rl.Allow(ctx, "bench-refuse", limit); return err })
		reportServerTime(b, c)
		for b.Loop() {
			res, err := rl.Allow(ctx, "bench-refuse", limit)
			if err != nil || res.Allowed != 0 {
				b.Fatal(res, err)
			}
		}
	})
	b.Run("admit-parallel", func(b *testing.B) {
		warm(b, func() error { _, err := rl.Allow(ctx, "bench-parallel", redis_rate.PerMinute(1<<30)); return err })
		reportServerTime(b, c)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				res, err := rl.Allow(ctx, "bench-parallel", redis_rate.PerMinute(1<<30))
				if err != nil || res.Allowed != 1 {
					b.Error(res, err)
					return
				}
			}
		})
	})
}

// BenchmarkVersusRedisRate alternates one decision of this store and one of
// redis_rate, call by call, on the same client and server, and reports the
// time of each and their ratio: load on the machine that drifts during a run
// hits both alike, so the ratio is steadier than that of two benchmarks run
// one after the other. An op is one call of each.
func BenchmarkVersusRedisRate(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	rl := redis_rate.NewLimiter(c)
	cases := []struct {
		name     string
		parallel bool
		limit    int
		window   time.Duration
		rate     redis_rate.Limit
		admitted bool
	}{
		{"admit", false, 1 << 30, 100 * time.Millisecond, redis_rate.PerMinute(1 << 30), true},
		{"refuse", false, 100, time.Minute, redis_rate.PerHour(100), false},
		{"admit-parallel", true, 1 << 30, 100 * time.Millisecond, redis_rate.PerMinute(1 << 30), true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			key := "versus-" + tc.name
			l, err := New(c, key, tc.limit, tc.window)
			if err != nil {
				b.Fatal(err)
			}
			warm(b, func() error { _, err := l.Allow(ctx); return err })
			warm(b, func() error { _, err := rl.Allow(ctx, key, tc.rate); return err })
			var ours, theirs atomic.Int64
			pair := func() bool {
				t0 := time.Now()
				ok, err := l.Allow(ctx)
				t1 := time.Now()
				res, err2 := rl.Allow(ctx, key, tc.rate)
				t2 := time.Now()
				ours.Add(int64(t1.Sub(t0)))
				theirs.Add(int64(t2.Sub(t1)))
				if err != nil || err2 != nil || ok != tc.admitted || (res.Allowed == 1) != tc.admitted {
					b.Error(ok, err, res, err2)
					return false
				}
				return true
			}
			if tc.parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() && pair() {
					}
				})
			} else {
				for b.Loop() {
					if !pair() {
						return
					}
				}
			}
			b.ReportMetric(float64(ours.Load())/float64(b.N), "redisstore-ns/call")
			b.ReportMetric(float64(theirs.Load())/float64(b.N), "redis_rate-ns/call")
			b.ReportMetric(float64(ours.Load())/float64(theirs.Load()), "ratio")
		})
	}
}
