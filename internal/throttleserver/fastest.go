package throttleserver

import (
	"fmt"
	"net/http"
	"time"
)

// Fastest returns how long after the first of reqs the last one can be
// accepted, at the earliest, by a server with cfg: the requests go in
// order, one key, each the moment the server would accept it (no latency,
// no refusal). No client can make these calls faster (in ModeGitHub, whose
// windows end on whole seconds, Fastest starts on a whole second; a client
// that starts later in a second can gain up to a second); a demo measures
// clients against it. cfg.Now is not used. Fastest reads the requests'
// bodies when cfg.Cost does, and panics when one of them costs more than a
// rule can ever accept.
func Fastest(cfg Config, reqs []*http.Request) time.Duration {
	start := time.Unix(0, 0) // a whole second: a GitHub window is not rounded up
	now := start
	cfg.Now = func() time.Time { return now }
	s := New(cfg)
	st := s.newKey()
	for _, r := range reqs {
		c := s.classify(r)
		rules := append(append([]rule(nil), st.rules...), s.routeRules(st, c.route)...)
		if st.secondary != nil {
			rules = append(rules, st.secondary)
		}
		for _, rl := range rules {
			if c.cost > rl.capacity() {
				panic(fmt.Sprintf("throttleserver: a call of cost %d can never be accepted", c.cost))
			}
		}
		// Each wait is exact for its rule, and waits only shrink as time
		// passes, so stepping to the longest converges in a few steps.
		for {
			var wait time.Duration
			for _, rl := range rules {
				wait = max(wait, rl.wait(now, c.cost))
			}
			if wait == 0 {
				break
			}
			now = now.Add(wait)
		}
		for _, rl := range rules {
			rl.add(now, c.cost)
		}
	}
	return now.Sub(start)
}
