//! The thinking half: one question in, one answer out. Builds the context (persona, memory,
//! bounded history), runs the bounded tool loop against Ollama and accounts the usage. It knows
//! nothing of IRC; failures come back as short sentences in [`Answer::notes`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fireclaw_proto::UsageRecord;

use crate::config::Config;
use crate::memory;
use crate::ollama::{self, Message};
use crate::tools::Tools;

/// Tool calls taken from one reply; more are answered with an error.
const CALLS_PER_ROUND: usize = 8;

/// What the channel is told about one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Short sentences about what went wrong on the way (a failed tool, a cut reply, Ollama down).
    pub notes: Vec<String>,
    /// The model's final text (may be empty when it failed).
    pub text: String,
    pub usage: UsageRecord,
}

impl Answer {
    /// Everything to send, notes first, as model-ish text (the IRC side sanitizes and splits it).
    pub fn to_text(&self) -> String {
        let mut parts: Vec<&str> = self.notes.iter().map(String::as_str).collect();
        if !self.text.trim().is_empty() {
            parts.push(&self.text);
        } else if self.notes.is_empty() {
            parts.push("(the model gave an empty answer)");
        }
        parts.join("\n")
    }
}

/// The agent's memory and per-conversation histories.
pub struct Brain {
    memory: String,
    histories: HashMap<String, VecDeque<Message>>,
}

impl Brain {
    /// Reads `MEMORY.md` from the workspace (a read error is logged and treated as empty).
    pub fn new(config: &Config) -> Brain {
        let mut brain = Brain {
            memory: String::new(),
            histories: HashMap::new(),
        };
        brain.reload_memory(config);
        brain
    }

    pub fn reload_memory(&mut self, config: &Config) {
        match memory::read(&config.workspace, config.limits.memory_bytes) {
            Ok(m) => self.memory = m,
            Err(e) => tracing::warn!(
                "cannot read {}: {e}",
                memory::path(&config.workspace).display()
            ),
        }
    }

    fn system_prompt(&self, config: &Config) -> String {
        let mut s = config.persona.trim().to_string();
        s.push_str(&format!(
            "\n\nYou are {} on IRC. Answer in a few short lines of plain text (no markdown tables). Your workspace is {}.",
            config.nick,
            config.workspace.display()
        ));
        if !self.memory.trim().is_empty() {
            s.push_str("\n\n## Your memory (MEMORY.md)\n");
            s.push_str(&self.memory);
        }
        s
    }

    /// Answers `question` from `who` in `conversation` (a channel, or `dm:<nick>`).
    pub async fn answer(
        &mut self,
        config: &Config,
        conversation: &str,
        who: &str,
        question: &str,
    ) -> Answer {
        let started = Instant::now();
        let tools = Tools {
            workspace: config.workspace.clone(),
            searxng: config.searxng.as_ref().map(|s| s.url.clone()),
            limits: config.limits.clone(),
        };
        let specs = tools.specs();
        let limits = &config.limits;
        let user = Message::new("user", format!("{who}: {question}"));
        let mut messages = vec![Message::new("system", self.system_prompt(config))];
        if let Some(h) = self.histories.get(conversation) {
            messages.extend(h.iter().cloned());
        }
        messages.push(user.clone());

        let mut notes = Vec::new();
        let mut text = String::new();
        let (mut prompt, mut eval, mut requests, mut ok) = (0u64, 0u64, 0u32, true);
        for round in 1..=limits.tool_rounds {
            requests += 1;
            let reply = ollama::chat(
                &config.ollama.url,
                &config.ollama.model,
                &messages,
                &specs,
                limits.reply_bytes,
                Duration::from_secs(limits.ollama_timeout_secs),
            )
            .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(model = %config.ollama.model, "chat failed: {e}");
                    notes.push(e.sentence());
                    ok = false;
                    break;
                }
            };
            prompt += reply.prompt_eval_count;
            eval += reply.eval_count;
            if reply.truncated {
                tracing::warn!(
                    limit = limits.reply_bytes,
                    "model reply cut at the size limit"
                );
                notes.push(format!(
                    "(my reply was longer than {} bytes and was cut there)",
                    limits.reply_bytes
                ));
                text = reply.content;
                break;
            }
            if reply.tool_calls.is_empty() {
                text = reply.content;
                break;
            }
            messages.push(Message {
                tool_calls: reply.tool_calls.clone(),
                ..Message::new("assistant", reply.content)
            });
            for (i, call) in reply.tool_calls.iter().enumerate() {
                let name = &call.function.name;
                let outcome = if i < CALLS_PER_ROUND {
                    tracing::info!(tool = %name, "tool call");
                    tools.call(name, &call.function.arguments).await
                } else {
                    crate::tools::Outcome {
                        content: format!("error: at most {CALLS_PER_ROUND} tool calls per reply"),
                        problem: None,
                        memory_changed: false,
                    }
                };
                if let Some(p) = &outcome.problem {
                    tracing::warn!(tool = %name, "tool call failed: {p}");
                    notes.push(p.clone());
                }
                if outcome.memory_changed {
                    self.reload_memory(config);
                    messages[0] = Message::new("system", self.system_prompt(config));
                }
                messages.push(Message::tool(name, outcome.content));
            }
            if round == limits.tool_rounds {
                tracing::warn!(rounds = round, "tool loop stopped at its limit");
                notes.push(format!(
                    "I stopped after {round} rounds of tool calls without a final answer."
                ));
                ok = false;
            }
        }

        if ok || !text.is_empty() {
            let history = self.histories.entry(conversation.to_string()).or_default();
            history.push_back(user);
            history.push_back(Message::new("assistant", text.clone()));
            while history.len() > limits.history_messages {
                history.pop_front();
            }
        }
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Answer {
            notes,
            text,
            usage: UsageRecord {
                id: crate::usage::new_id(at_unix_ms),
                at_unix_ms,
                duration_ms: started.elapsed().as_millis() as u64,
                model: config.ollama.model.clone(),
                prompt_eval_count: prompt,
                eval_count: eval,
                requests,
                ok,
            },
        }
    }
}
