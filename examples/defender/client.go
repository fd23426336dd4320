package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/apiquota/limiter"
)

// Defender's routes with quotas of their own.
const (
	advancedHunting = "POST /api/advancedqueries/run"
	incidents       = "/api/incidents"
)

// newClient returns the http.Client of one tenant and app, and its
// Transport, whose state (the tenant rule's and each route's) save and
// restore keep. minute is time.Minute against the real API; base is the
// Transport that sends the requests (nil: http.DefaultTransport; put your
// token source's Transport here). Use one client for all the calls of the
// tenant and app: the quota is theirs, not a client's.
func newClient(base http.RoundTripper, minute time.Duration) (*http.Client, *limiter.Transport, error) {
	tenant, err := limiter.New(100, minute, limiter.WithWindow(1500, 60*minute))
	if err != nil {
		return nil, nil, err
	}
	t := limiter.NewTransport(base, tenant)
	if err := t.Route(advancedHunting, 45, minute); err != nil {
		return nil, nil, err
	}
	if err := t.Route(incidents, 50, minute); err != nil {
		return nil, nil, err
	}
	t.Cost = batchCost
	t.Classify = defenderThrottle
	return &http.Client{Transport: t}, t, nil
}

// batchCost weighs a $batch by its inner requests, which the API charges
// one call each; any other request weighs 1. It reads a copy of the body
// from GetBody (which http.NewRequest sets for a bytes or strings reader),
// so the request itself is untouched.
func batchCost(req *http.Request) int {
	if req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/$batch") || req.GetBody == nil {
		return 1
	}
	body, err := req.GetBody()
	if err != nil {
		return 1
	}
	defer body.Close()
	var batch struct {
		Requests []json.RawMessage `json:"requests"`
	}
	if err := json.NewDecoder(body).Decode(&batch); err != nil {
		return 1
	}
	return max(len(batch.Requests), 1)
}

// tryAgain finds the wait in the message of Defender's 429 body.
var tryAgain = regexp.MustCompile(`(?i)try again in (\d+) seconds?`)

// defenderThrottle is the Transport's Classify hook for Defender's 429s,
// which may name the wait in the JSON body instead of Retry-After:
// {"error":{"code":"TooManyRequests","message":"... Try again in 12 seconds."}}.
// It reports any other response as not throttled by it, so that the
// Transport's own rules (Retry-After and the rate-limit headers) apply.
func defenderThrottle(resp *http.Response) (throttled bool, wait time.Duration) {
	if resp.StatusCode != http.StatusTooManyRequests {
		return false, 0
	}
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return true, 0 // a 429 all the same; the headers or a backoff decide the wait
	}
	if m := tryAgain.FindStringSubmatch(body.Error.Message); m != nil {
		if secs, err := strconv.Atoi(m[1]); err == nil {
			return true, time.Duration(secs) * time.Second
		}
	}
	return true, 0
}

// restore adds the calls saved in path to the Transport's limiters (the
// tenant rule and the routes, advanced hunting's among them), so that a
// restarted job does not send the burst that the server, which still
// counts them, would refuse. Register the routes before. A missing file is
// a first run: nothing to restore. A file that is not a snapshot is an
// error, and no limiter has changed.
func restore(t *limiter.Transport, path string) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := t.UnmarshalBinary(data); err != nil {
		return false, fmt.Errorf("restoring %s: %w", path, err)
	}
	return true, nil
}

// save writes the state of the Transport's limiters to path, through a
// temporary file and a rename, so that a crash while saving leaves the last
// good state.
func save(t *limiter.Transport, path string) error {
	data, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
