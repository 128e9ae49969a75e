package httpapi

import (
	"net/http"

	"nullspace.dev/nullspace/api"
)

// machineMetrics returns a running machine's recent samples, or with
// follow=true streams each new one (the Monitor).
func (s *Server) machineMetrics(w http.ResponseWriter, r *http.Request, team string) error {
	id := r.PathValue("id")
	if r.URL.Query().Get("follow") != "true" {
		samples, err := s.machines.Metrics(r.Context(), team, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.MetricList{Metrics: samples})
		return nil
	}
	if _, err := s.machines.Get(r.Context(), team, id); err != nil {
		return err
	}
	write := startStream(w, r)
	return s.machines.Monitor(r.Context(), team, id, func(m api.MetricSample) error {
		return write(m, "")
	})
}
