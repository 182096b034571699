-- The caller's team (the token's team claim, an ApiKey's spec.team, or the role under
-- limits.perTeam.rolePrefix; NULL: no team), so spend can be grouped by team.
ALTER TABLE usage ADD COLUMN team TEXT;
CREATE INDEX usage_team_ts ON usage (team, ts_ms);
