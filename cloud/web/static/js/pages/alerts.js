// Alerts: the open ones (acknowledge, resolve) and the past ones, each with its delivery
// status per notification channel.

import * as api from "../api.js";
import { h, section } from "../dom.js";
import { alertsTable, loadChannelNames } from "./alerts-view.js";

export const alertsPage = {
  nav: "alerts",
  title: () => "Alerts",
  async load() {
    const [alerts, channels] = await Promise.all([api.get("/api/alerts"), loadChannelNames()]);
    return { alerts, channels: [...channels] };
  },
  render({ alerts, channels }, ctx) {
    const names = new Map(channels);
    const open = alerts.filter((a) => a.state !== "resolved");
    const past = alerts.filter((a) => a.state === "resolved").slice(-100).reverse();
    return h("div", { class: "page" },
      h("h1", {}, "Alerts"),
      section("Active alerts", alertsTable("Active and acknowledged alerts", open, ctx, names,
        "No active alerts.")),
      section("Past alerts", alertsTable("Resolved alerts, newest first", past, ctx, names,
        "No resolved alerts yet.")));
  },
};
