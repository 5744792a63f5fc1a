// The sample SMART app of Ward's demo mode: a standalone or EHR launch with PKCE (S256), using
// only what any third-party app can use. No framework; sessionStorage keeps the PKCE verifier
// and state between leaving for /authorize and coming back.
"use strict";

(function () {
  const app = document.getElementById("app");
  if (!app) return;
  const clientId = app.dataset.clientId;
  const redirectUri = app.dataset.redirectUri;
  const defaultIss = app.dataset.fhirBase;
  const status = document.getElementById("status");
  const say = (text) => { status.textContent = text; };

  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));
  const decode = (jwt) => {
    const [h, p] = jwt.split(".");
    const text = (s) => decodeURIComponent(escape(atob(s.replace(/-/g, "+").replace(/_/g, "/"))));
    return { header: JSON.parse(text(h)), claims: JSON.parse(text(p)) };
  };
  const show = (id, value) => {
    document.getElementById(id).textContent = JSON.stringify(value, null, 2);
  };

  async function discover(iss) {
    const r = await fetch(iss.replace(/\/$/, "") + "/.well-known/smart-configuration");
    if (!r.ok) throw new Error("discovery failed: " + r.status);
    return r.json();
  }

  async function launch(iss, launchValue) {
    say("Reading the SMART configuration of " + iss + " …");
    const config = await discover(iss);
    const verifier = random(32);
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = random(16);
    sessionStorage.setItem("ward-demo", JSON.stringify({ state, verifier, iss, token: config.token_endpoint }));
    const scope = launchValue
      ? "launch openid fhirUser patient/*.rs"
      : "launch/patient openid fhirUser patient/*.rs";
    const params = new URLSearchParams({
      response_type: "code", client_id: clientId, redirect_uri: redirectUri, scope, state,
      aud: iss, code_challenge: challenge, code_challenge_method: "S256",
    });
    if (launchValue) params.set("launch", launchValue);
    location.assign(config.authorization_endpoint + "?" + params.toString());
  }

  async function finish(code, returnedState) {
    const saved = JSON.parse(sessionStorage.getItem("ward-demo") || "null");
    sessionStorage.removeItem("ward-demo");
    if (!saved || saved.state !== returnedState) throw new Error("state does not match: not our request");
    say("Exchanging the code at " + saved.token + " …");
    const r = await fetch(saved.token, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "authorization_code", code, redirect_uri: redirectUri,
        client_id: clientId, code_verifier: saved.verifier,
      }),
    });
    const tokens = await r.json();
    if (!r.ok) throw new Error("token request refused: " + JSON.stringify(tokens));
    document.getElementById("results").hidden = false;
    const shown = Object.assign({}, tokens);
    show("token-response", shown);
    if (tokens.id_token) show("id-token", decode(tokens.id_token));
    show("access-token", decode(tokens.access_token));
    const i = await fetch("/demo/introspect", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: tokens.access_token }),
    });
    show("introspection", await i.json());
    history.replaceState(null, "", location.pathname);
    say("Done: signed in, authorized and introspected.");
  }

  document.getElementById("standalone").addEventListener("click", () => {
    launch(defaultIss, null).catch((e) => say(e.message));
  });

  const q = new URLSearchParams(location.search);
  if (q.get("error")) {
    say("The authorization server answered: " + q.get("error") + " — " + (q.get("error_description") || ""));
  } else if (q.get("code")) {
    finish(q.get("code"), q.get("state")).catch((e) => say(e.message));
  } else if (q.get("iss") && q.get("launch")) {
    // An app launches only from FHIR servers it knows: an unknown iss could be a phishing EHR.
    if (q.get("iss") !== defaultIss) {
      say("Refusing a launch from an unknown FHIR server: " + q.get("iss"));
    } else {
      launch(q.get("iss"), q.get("launch")).catch((e) => say(e.message));
    }
  }
})();
